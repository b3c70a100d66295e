// Reads an executable's ELF header and program headers (32- or 64-bit, either byte
// order), or a script's "#!" line; see elf_info.h.
#include "elf_info.h"

#include <elf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "error.h"
#include "fd.h"

namespace homeward {
namespace {

// Reads exactly `size` bytes at `offset`, or fewer at end of file; returns how many.
size_t ReadAt(const Fd& fd, const std::string& path, void* out, size_t size, off_t offset) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = HW_SYSCALL(::pread(fd.get(), static_cast<char*>(out) + done, size - done,
                                   offset + static_cast<off_t>(done)),
                           "read {}", path);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

template <typename T>
T Swap(T value, bool swap) {
  if (!swap) return value;
  T out;
  auto* in = reinterpret_cast<unsigned char*>(&value);
  auto* o = reinterpret_cast<unsigned char*>(&out);
  for (size_t i = 0; i < sizeof(T); ++i) o[i] = in[sizeof(T) - 1 - i];
  return out;
}

template <typename Ehdr, typename Phdr>
ExecutableInfo ReadElf(const Fd& fd, const std::string& path, bool swap) {
  Ehdr header;
  if (ReadAt(fd, path, &header, sizeof(header), 0) != sizeof(header)) {
    Fail(ErrorKind::kInvalidInput, "{} is not an executable: its ELF header is cut short", path);
  }
  auto type = Swap(header.e_type, swap);
  if (type != ET_EXEC && type != ET_DYN) {
    Fail(ErrorKind::kInvalidInput, "{} is an ELF file but not an executable", path);
  }
  auto count = Swap(header.e_phnum, swap);
  auto entry_size = Swap(header.e_phentsize, swap);
  auto offset = static_cast<off_t>(Swap(header.e_phoff, swap));
  if (count > 0 && entry_size < sizeof(Phdr)) {
    Fail(ErrorKind::kInvalidInput, "{} has malformed program headers", path);
  }
  for (unsigned i = 0; i < count; ++i) {
    Phdr ph;
    if (ReadAt(fd, path, &ph, sizeof(ph), offset + static_cast<off_t>(i) * entry_size) !=
        sizeof(ph)) {
      Fail(ErrorKind::kInvalidInput, "{} has program headers past its end", path);
    }
    if (Swap(ph.p_type, swap) != PT_INTERP) continue;
    auto size = static_cast<size_t>(Swap(ph.p_filesz, swap));
    if (size == 0 || size > 4096) {
      Fail(ErrorKind::kInvalidInput, "{} names an interpreter of bad length {}", path, size);
    }
    std::string interpreter(size, '\0');
    if (ReadAt(fd, path, interpreter.data(), size, static_cast<off_t>(Swap(ph.p_offset, swap))) !=
        size) {
      Fail(ErrorKind::kInvalidInput, "{} names an interpreter past its end", path);
    }
    interpreter.resize(strnlen(interpreter.c_str(), size));
    return {ExecutableKind::kDynamic, interpreter};
  }
  return {ExecutableKind::kStatic, ""};
}

}  // namespace

ExecutableInfo ReadExecutableInfo(const std::string& path) {
  Fd fd = Fd::Open(path, O_RDONLY);
  unsigned char ident[EI_NIDENT] = {};
  size_t got = ReadAt(fd, path, ident, sizeof(ident), 0);
  if (got >= 2 && ident[0] == '#' && ident[1] == '!') {
    char line[256] = {};
    size_t n = ReadAt(fd, path, line, sizeof(line) - 1, 2);
    std::string rest(line, n);
    size_t start = rest.find_first_not_of(" \t");
    size_t end = rest.find_first_of(" \t\n", start);
    if (start == std::string::npos || start == end) {
      Fail(ErrorKind::kInvalidInput, "{} starts with #! but names no interpreter", path);
    }
    return {ExecutableKind::kScript, rest.substr(start, end - start)};
  }
  if (got < EI_NIDENT || memcmp(ident, ELFMAG, SELFMAG) != 0) {
    Fail(ErrorKind::kInvalidInput, "{} is neither an ELF executable nor a #! script", path);
  }
  bool little = ident[EI_DATA] == ELFDATA2LSB;
  if (!little && ident[EI_DATA] != ELFDATA2MSB) {
    Fail(ErrorKind::kInvalidInput, "{} has an unknown ELF byte order", path);
  }
  bool swap = little != (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__);
  if (ident[EI_CLASS] == ELFCLASS64) return ReadElf<Elf64_Ehdr, Elf64_Phdr>(fd, path, swap);
  if (ident[EI_CLASS] == ELFCLASS32) return ReadElf<Elf32_Ehdr, Elf32_Phdr>(fd, path, swap);
  Fail(ErrorKind::kInvalidInput, "{} has an unknown ELF class", path);
}

}  // namespace homeward
