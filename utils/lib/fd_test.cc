// Whole-buffer sends: every byte arrives in order however the socket splits the sends, a
// peer gone is an error rather than a SIGPIPE, and a descriptor that is not a socket is
// written all the same.
#include "fd.h"

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <csignal>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "error.h"

namespace homeward {
namespace {

std::pair<Fd, Fd> StreamPair() {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  return {Fd::Adopt(fds[0]), Fd::Adopt(fds[1])};
}

// Everything readable from `fd` until its writer closes.
std::string ReadToEnd(int fd) {
  std::string all;
  char buffer[4096];
  while (size_t n = ReadSome(fd, buffer, sizeof buffer, "test")) all.append(buffer, n);
  return all;
}

std::string Pattern(size_t size) {
  std::string text(size, '\0');
  for (size_t i = 0; i < size; ++i) text[i] = static_cast<char>('a' + (i * 7 + i / 251) % 26);
  return text;
}

TEST(SendAllTest, APeerGoneIsAnErrorAndNotASignal) {
  // The default disposition, which would end this process on a plain write.
  auto* previous = std::signal(SIGPIPE, SIG_DFL);
  auto [ours, theirs] = StreamPair();
  theirs.Reset();
  char byte = 'x';
  try {
    SendAll(ours.get(), &byte, 1, "the answer");
    ADD_FAILURE() << "a send to a closed peer succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.sys_errno(), EPIPE);
    EXPECT_NE(std::string(e.what()).find("the answer"), std::string::npos) << e.what();
  }
  iovec piece{&byte, 1};
  EXPECT_THROW(SendAll(ours.get(), &piece, 1, "the answer"), Error);
  std::signal(SIGPIPE, previous);
}

TEST(SendAllTest, ManyPiecesThroughASmallBufferArriveWholeAndInOrder) {
  auto [ours, theirs] = StreamPair();
  int small = 4096;
  ASSERT_EQ(::setsockopt(ours.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
  // More pieces than one sendmsg takes, of uneven lengths (some empty), so that sends end
  // inside pieces and between them.
  std::string text = Pattern(3000 * 37);
  std::vector<iovec> pieces;
  for (size_t at = 0, i = 0; at < text.size(); ++i) {
    size_t length = std::min(text.size() - at, (i * 13) % 75);
    pieces.push_back({text.data() + at, length});
    at += length;
  }
  ASSERT_GT(pieces.size(), 1024u);
  std::string received;
  std::thread reader([&, fd = theirs.get()] { received = ReadToEnd(fd); });
  SendAll(ours.get(), pieces.data(), pieces.size(), "pieces");
  SendAll(ours.get(), text.data(), text.size(), "whole");
  ours.Reset();
  reader.join();
  EXPECT_EQ(received, text + text);
}

TEST(SendAllTest, APipeIsWrittenAllTheSame) {
  Pipe pipe = Pipe::Create();
  std::string text = Pattern(200 * 1024);  // more than a pipe holds at once
  std::string received;
  std::thread reader([&, fd = pipe.read.get()] { received = ReadToEnd(fd); });
  iovec pieces[] = {{text.data(), 1000}, {text.data() + 1000, text.size() - 1000}};
  SendAll(pipe.write.get(), pieces, 2, "pieces");
  SendAll(pipe.write.get(), text.data(), text.size(), "whole");
  pipe.write.Reset();
  reader.join();
  EXPECT_EQ(received, text + text);
}

}  // namespace
}  // namespace homeward
