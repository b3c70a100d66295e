// What encrypting peer connections costs: the migration stream and homefs sequential read,
// each measured through the real PeerServer and PeerConnect over loopback with the
// connections encrypted (as always in the daemon) and, for the baseline, in clear (a
// setting only tests and benchmarks can reach), in the same run, rounds interleaved.
//
//   bench/run crypto [--mib N] [--rounds R]
//
// Migration: SendImages of an image directory (4 files, N MiB in all, in /dev/shm) to
// the "migration" service, which receives it with ReceiveImages into /dev/shm; timed
// from connect to the receiver's acknowledgement. homefs: the FUSE file system (the same
// code as mosmount, in this process) mounted fresh for each round from the "files"
// service, which exports a directory in /dev/shm; one N MiB file read sequentially in
// 1 MiB reads. Both in memory, so that the network path and the cipher are all there is
// to measure: the ratio is the worst case (a disk would hide more of the cost).
//
// Both ends run in this process, so its CPU time (all threads, user and system, from
// getrusage) per MiB moved is the whole cost of a path, whatever else loads the machine;
// clear/encrypted CPU per MiB is then the throughput ratio the machine's cores allow when
// every core is busy with the transfer (as on loopback here), the bound of the measured one.
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sched.h>
#include <signal.h>
#include <sodium.h>
#include <sys/resource.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "aes_gcm.h"
#include "client.h"
#include "error.h"
#include "file_server.h"
#include "fs.h"
#include "image_stream.h"
#include "mounted.h"
#include "peer_auth.h"
#include "peer_server.h"
#include "secure_channel.h"

namespace homeward {
namespace {

using Clock = std::chrono::steady_clock;

void WriteRandomFile(const std::string& path, size_t bytes) {
  Fd fd = Fd::Open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::string chunk(1 << 20, '\0');
  for (size_t done = 0; done < bytes; done += chunk.size()) {
    randombytes_buf(chunk.data(), chunk.size());
    size_t n = std::min(chunk.size(), bytes - done);
    size_t at = 0;
    while (at < n) {
      ssize_t w = ::write(fd.get(), chunk.data() + at, n - at);
      if (w <= 0) throw SystemError(errno, "write " + path);
      at += static_cast<size_t>(w);
    }
  }
}

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// CPU seconds of the whole process (every thread, user and system) so far.
double CpuSeconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  auto s = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  return s(usage.ru_utime) + s(usage.ru_stime);
}

// One transfer: its rate and the CPU it took per MiB.
struct Sample {
  double mb_per_s = 0;
  double cpu_ms_per_mib = 0;
};

struct Bench {
  std::string dir;
  std::vector<uint8_t> key;
  uint64_t bytes = 0;
  std::string address = "127.0.0.1";
  uint16_t port = 0;
  std::atomic<int> received{0};

  // One move's stream: connect, send, wait for the receiver's word.
  Sample Migrate() {
    double cpu = CpuSeconds();
    auto start = Clock::now();
    auto stream = PeerConnectStream(address, port, key, "migration", std::chrono::seconds(10));
    migrate::JobMetadata job;
    job.job_id = 1;
    job.home_node = "bench";
    job.home_pid = 1;
    migrate::SendImages(*stream, dir + "/images", job);
    char ack = 0;
    if (stream->Read(&ack, 1) != 1 || ack != 1) {
      throw Error(ErrorKind::kFailed, "the receiver did not confirm the images");
    }
    double rate = bytes / 1e6 / Seconds(Clock::now() - start);
    return {rate, (CpuSeconds() - cpu) * 1e3 / (bytes >> 20)};
  }

  // One sequential read of the file through a fresh homefs mount.
  Sample HomefsRead() {
    ClientOptions options{address, port, key, std::chrono::milliseconds(10000)};
    FileClient client(options);
    std::optional<Fs> fs;
    fs.emplace(client, FsOptions{}, client.Probe());
    OneHome mounted(*fs);
    std::vector<const char*> argv = {"crypto_bench", "-o", "fsname=homefs:bench,subtype=homefs"};
    fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), const_cast<char**>(argv.data()));
    fuse_session* se = fuse_session_new(&args, &Mounted::Operations(), sizeof(fuse_lowlevel_ops), &mounted);
    if (!se) throw Error(ErrorKind::kFailed, "cannot create the FUSE session");
    std::string mountpoint = dir + "/mnt";
    if (fuse_session_mount(se, mountpoint.c_str()) != 0) {
      fuse_session_destroy(se);
      throw Error(ErrorKind::kFailed, "cannot mount homefs on " + mountpoint);
    }
    fs->StartNotices(se);
    client.Start();
    std::thread loop([se] {
      fuse_loop_config config{};
      config.clone_fd = 0;
      config.max_idle_threads = 16;
      fuse_session_loop_mt(se, &config);
    });
    Sample rate;
    std::string error;
    try {
      double cpu = CpuSeconds();
      auto start = Clock::now();
      Fd fd = Fd::Open(mountpoint + "/data", O_RDONLY);
      std::vector<char> buffer(1 << 20);
      uint64_t total = 0;
      for (;;) {
        ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
        if (n < 0) throw SystemError(errno, "read through homefs");
        if (n == 0) break;
        total += static_cast<uint64_t>(n);
      }
      if (total != bytes) throw Error(ErrorKind::kFailed, "short read through homefs");
      rate.mb_per_s = bytes / 1e6 / Seconds(Clock::now() - start);
      rate.cpu_ms_per_mib = (CpuSeconds() - cpu) * 1e3 / (bytes >> 20);
    } catch (const std::exception& e) {
      error = e.what();
    }
    fuse_session_exit(se);
    fuse_session_unmount(se);
    loop.join();
    client.Stop();
    fs->StopNotices();
    fuse_session_destroy(se);
    fuse_opt_free_args(&args);
    if (!error.empty()) throw Error(ErrorKind::kFailed, error);
    return rate;
  }
};

// This thread's CPU seconds: the cipher's rate below does not depend on the machine's load.
double ThreadCpuSeconds() {
  timespec t{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

// The cipher alone on one core: 64 KiB records sealed and opened in place, as the
// streams do; 1 / seal + 1 / open is the CPU encryption adds per byte (both ends).
std::pair<double, double> CipherRates(PeerCipher cipher) {
  std::array<uint8_t, kPeerSessionKeyBytes> key{};
  RecordSealer sealer(cipher, key);
  RecordOpener opener(cipher, key);
  std::vector<uint8_t> record(kRecordHeaderBytes + kMaxRecordPlaintext + kRecordTagBytes);
  constexpr int kRecords = 4096;  // 256 MiB
  double start = ThreadCpuSeconds();
  for (int i = 0; i < kRecords; ++i) sealer.SealInPlace(record.data(), kMaxRecordPlaintext);
  double seal = kRecords * double(kMaxRecordPlaintext) / 1e6 / (ThreadCpuSeconds() - start);
  RecordSealer again(cipher, key);
  std::vector<uint8_t> wire(record.size());
  double open_seconds = 0;
  for (int i = 0; i < kRecords; ++i) {
    size_t n = again.SealInPlace(wire.data(), kMaxRecordPlaintext);
    opener.Feed(std::string_view(reinterpret_cast<const char*>(wire.data()), n));
    double t = ThreadCpuSeconds();
    std::string_view plain;
    if (opener.Open(&plain) != RecordOpener::Result::kRecord) {
      throw Error(ErrorKind::kFailed, "the benchmark's own record did not open");
    }
    open_seconds += ThreadCpuSeconds() - t;
  }
  double open = kRecords * double(kMaxRecordPlaintext) / 1e6 / open_seconds;
  return {seal, open};
}

struct Figures {
  std::vector<double> plain, encrypted;
  std::vector<double> plain_cpu, encrypted_cpu;  // ms per MiB
};

double Best(const std::vector<double>& v) {
  return *std::max_element(v.begin(), v.end());
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run(int argc, char** argv) {
  CLI::App app{"Throughput of the migration stream and homefs read, encrypted and in clear"};
  int mib = 1024;
  int rounds = 3;
  std::string netns, address = "127.0.0.1";
  app.add_option("--server-netns", netns,
                 "run the peer server in this network namespace (/run/netns/NAME), to put a "
                 "real link between it and the clients");
  app.add_option("--address", address, "the server's address (in --server-netns)");
  app.add_option("--mib", mib, "MiB moved and read per round")->check(CLI::Range(16, 8192));
  app.add_option("--rounds", rounds, "rounds of each (interleaved)")->check(CLI::Range(1, 20));
  std::string only;
  app.add_option("--only", only, "run only the clear or the encrypted rounds (to profile one)")
      ->check(CLI::IsMember({"clear", "encrypted"}));
  std::string path;
  app.add_option("--path", path, "run only the migration stream or the homefs read (to profile one)")
      ->check(CLI::IsMember({"migration", "homefs"}));
  bool openssl = false;
  app.add_flag("--openssl", openssl,
               "seal and open with OpenSSL's AES-GCM even where the vector one runs (to compare)");
  CLI11_PARSE(app, argc, argv);
  if (sodium_init() < 0) return 1;
  UseVectorAesForTesting(!openssl);
  spdlog::set_level(spdlog::level::warn);
  ::signal(SIGPIPE, SIG_IGN);

  Bench bench;
  bench.dir = fmt::format("/dev/shm/homeward-crypto-bench-{}", ::getpid());
  bench.bytes = uint64_t(mib) << 20;
  bench.key.resize(32);
  randombytes_buf(bench.key.data(), bench.key.size());
  std::filesystem::create_directories(bench.dir + "/images");
  std::filesystem::create_directories(bench.dir + "/export");
  std::filesystem::create_directories(bench.dir + "/mnt");
  int status = 0;
  try {
    for (int i = 0; i < 4; ++i) {
      WriteRandomFile(fmt::format("{}/images/pages-{}.img", bench.dir, i + 1), bench.bytes / 4);
    }
    WriteRandomFile(bench.dir + "/export/data", bench.bytes);

    FileServer files(bench.dir + "/export", 4);
    PeerServer server(address, 0, bench.key, PeerConfig{});
    server.RegisterStream("files", [&](std::unique_ptr<SecureStream> stream, PeerIdentity peer) {
      files.Serve(std::move(stream), peer);
    });
    server.RegisterStream("migration", [&](std::unique_ptr<SecureStream> stream, PeerIdentity) {
      std::string into = fmt::format("{}/received-{}", bench.dir, ++bench.received);
      migrate::ReceiveImages(*stream, into);
      migrate::RemoveImageDir(into);
      char ack = 1;
      stream->Write(&ack, 1);
    });
    if (netns.empty()) {
      server.Start();
    } else {
      // The listener is made in the namespace (a thread that entered it); the gate thread
      // and the connections it accepts belong to it from then on.
      std::string error;
      std::thread([&] {
        try {
          Fd ns = Fd::Open("/run/netns/" + netns, O_RDONLY);
          HW_SYSCALL(::setns(ns.get(), CLONE_NEWNET), "enter network namespace {}", netns);
          server.Start();
        } catch (const std::exception& e) {
          error = e.what();
        }
      }).join();
      if (!error.empty()) throw Error(ErrorKind::kFailed, error);
    }
    bench.port = server.port();
    bench.address = address;

    PeerSecurity encrypted = {};
    const char* cipher = !(encrypted.allow_aes && crypto_aead_aes256gcm_is_available())
                             ? "ChaCha20-Poly1305"
                         : AesGcm256::Available() && !openssl ? "AES-256-GCM (VAES, 512-bit)"
                                                              : "AES-256-GCM (OpenSSL)";
    {
      auto [seal, open] = CipherRates(crypto_aead_aes256gcm_is_available()
                                          ? PeerCipher::kAes256Gcm
                                          : PeerCipher::kChaCha20Poly1305);
      std::printf("%s on one core, 64 KiB records: seal %.0f MB/s, open %.0f MB/s "
                  "(%.2f ms CPU per MiB for both ends)\n",
                  cipher, seal, open, 1.048576e3 / seal + 1.048576e3 / open);
    }
    Figures migration, homefs;
    for (int round = 0; round < rounds; ++round) {
      for (bool clear : {true, false}) {
        if (!only.empty() && clear != (only == "clear")) continue;
        SetPeerSecurityForTesting({.plaintext = clear});
        Sample m = path != "homefs" ? bench.Migrate() : Sample{};
        Sample h = path != "migration" ? bench.HomefsRead() : Sample{};
        (clear ? migration.plain : migration.encrypted).push_back(m.mb_per_s);
        (clear ? homefs.plain : homefs.encrypted).push_back(h.mb_per_s);
        (clear ? migration.plain_cpu : migration.encrypted_cpu).push_back(m.cpu_ms_per_mib);
        (clear ? homefs.plain_cpu : homefs.encrypted_cpu).push_back(h.cpu_ms_per_mib);
        std::printf(
            "round %d %-9s  migration stream %7.0f MB/s (%.2f ms CPU/MiB)   homefs sequential "
            "read %7.0f MB/s (%.2f ms CPU/MiB)\n",
            round + 1, clear ? "clear" : "encrypted", m.mb_per_s, m.cpu_ms_per_mib, h.mb_per_s,
            h.cpu_ms_per_mib);
        std::fflush(stdout);
      }
    }
    SetPeerSecurityForTesting({});
    files.Stop();
    server.Stop();
    if (!only.empty()) throw std::runtime_error("");  // no ratio without both
    // The paths measured (with --path, only that one).
    std::vector<std::pair<const char*, Figures*>> paths;
    if (path != "homefs") paths.push_back({"migration stream", &migration});
    if (path != "migration") paths.push_back({"homefs sequential read", &homefs});

    std::printf("\n%s: %d MiB per round, %d rounds, cipher %s; MB/s best (median)\n",
                netns.empty() ? "loopback" : ("a link to " + address).c_str(), mib, rounds, cipher);
    std::printf("| path                   |       clear |   encrypted | encrypted/clear |\n");
    std::printf("|------------------------|-------------|-------------|-----------------|\n");
    for (auto [name, f] : paths) {
      std::printf("| %-22s | %5.0f (%4.0f) | %5.0f (%4.0f) |  %4.2f (%4.2f)    |\n", name,
                  Best(f->plain), Median(f->plain), Best(f->encrypted), Median(f->encrypted),
                  Best(f->encrypted) / Best(f->plain), Median(f->encrypted) / Median(f->plain));
    }
    // What bounds the ratio when the transfer has every core (loopback): the CPU it takes.
    std::printf("\nCPU time of both ends per MiB (median, ms) and the ratio it allows on busy cores\n");
    std::printf("| path                   | clear | encrypted | clear/encrypted |\n");
    std::printf("|------------------------|-------|-----------|-----------------|\n");
    for (auto [name, f] : paths) {
      double c = Median(f->plain_cpu), e = Median(f->encrypted_cpu);
      std::printf("| %-22s | %5.2f |     %5.2f |       %4.2f      |\n", name, c, e, c / e);
    }
  } catch (const std::exception& e) {
    if (*e.what() != '\0') {
      std::fprintf(stderr, "crypto_bench: %s\n", e.what());
      status = 1;
    }
  }
  std::error_code ignored;
  std::filesystem::remove_all(bench.dir, ignored);
  return status;
}

}  // namespace
}  // namespace homeward

int main(int argc, char** argv) {
  return homeward::Run(argc, argv);
}
