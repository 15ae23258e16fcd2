#include "common/file.h"

#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace verdictd {
namespace {

TEST(ReadFileToStringTest, ReadsTheWholeFileBytesIncluded) {
  char path[] = "/tmp/verdictd-file-test-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  const std::string contents("line one\nbinary \0 byte\n", 23);
  std::ofstream(path, std::ios::binary) << contents;
  absl::StatusOr<std::string> read = ReadFileToString(path);
  unlink(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, contents);
}

TEST(ReadFileToStringTest, MissingFileIsNotFoundAndNamesThePath) {
  absl::StatusOr<std::string> read = ReadFileToString("/nonexistent/verdictd/file");
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(read.status().message(),
              ::testing::HasSubstr("cannot read /nonexistent/verdictd/file: No such file"));
}

}  // namespace
}  // namespace verdictd
