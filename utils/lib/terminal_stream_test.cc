// The terminal stream's frames, cut from pieces as the pipes deliver them.
#include "terminal_stream.h"

#include <gtest/gtest.h>

namespace homeward::terminal {
namespace {

TEST(TerminalStream, FramesComeWholeWhateverTheyArriveIn) {
  std::string stream;
  AppendFrame(stream, FrameType::kData, "hello", 5);
  AppendFrame(stream, FrameType::kStopped, "\x14", 1);
  AppendFrame(stream, FrameType::kData, "", 0);
  FrameReader reader;
  std::vector<std::pair<FrameType, std::string>> got;
  for (char byte : stream) {  // one byte at a time: every cut a pipe could make
    reader.Feed(&byte, 1);
    while (auto frame = reader.Next()) got.emplace_back(frame->type, frame->payload);
  }
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], std::pair(FrameType::kData, std::string("hello")));
  EXPECT_EQ(got[1], std::pair(FrameType::kStopped, std::string("\x14")));
  EXPECT_EQ(got[2], std::pair(FrameType::kData, std::string()));
  EXPECT_EQ(reader.partial(), 0u);
}

TEST(TerminalStream, ModesAndWindowRoundTrip) {
  termios modes{};
  modes.c_iflag = ICRNL | IXON;
  modes.c_oflag = OPOST | ONLCR;
  modes.c_cflag = CS8 | CREAD;
  modes.c_lflag = ISIG | ICANON | ECHO;
  modes.c_cc[VINTR] = 3;
  modes.c_cc[VSUSP] = 26;
  cfsetispeed(&modes, B38400);
  cfsetospeed(&modes, B9600);
  auto back = DecodeModes(EncodeModes(modes));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->c_iflag, modes.c_iflag);
  EXPECT_EQ(back->c_oflag, modes.c_oflag);
  EXPECT_EQ(back->c_cflag, modes.c_cflag);
  EXPECT_EQ(back->c_lflag, modes.c_lflag);
  EXPECT_EQ(cfgetispeed(&*back), cfgetispeed(&modes));
  EXPECT_EQ(cfgetospeed(&*back), B9600);
  EXPECT_EQ(back->c_cc[VSUSP], 26);
  EXPECT_FALSE(DecodeModes("short"));

  winsize size{50, 132, 800, 600};
  auto window = DecodeWindow(EncodeWindow(size));
  ASSERT_TRUE(window);
  EXPECT_EQ(window->ws_row, 50);
  EXPECT_EQ(window->ws_col, 132);
  EXPECT_FALSE(DecodeWindow("x"));
}

TEST(TerminalStream, AnOversizedFrameEndsTheStream) {
  FrameReader reader;
  const char header[] = {1, 0, 0, 0, 0x7f};
  reader.Feed(header, sizeof header);
  EXPECT_FALSE(reader.Next());
  EXPECT_TRUE(reader.failed());
}

}  // namespace
}  // namespace homeward::terminal
