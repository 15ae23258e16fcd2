// End-to-end store faults: the SQLite store locked by another process, out of disk space, or on
// a read-only file system at start-up. A miss whose click cannot be recorded is never sent, hits
// are still served, and misses work again once the fault clears.

#include <sqlite3.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/faults_fixture.h"
#include "tests/support/sqlite_query.h"

namespace verdictd::testing::faults {
namespace {

using ::testing::HasSubstr;

// Waits until the batched usage counters hold `requests` checks in total, so that no usage write
// is pending (one would queue ahead of the next click and change the timing).
void WaitForUsageRequests(const std::string& db, int64_t requests) {
  EXPECT_TRUE(WaitUntil(
      absl::StrCat(requests, " requests in the usage counters"),
      [&] { return QueryInt(db, "SELECT coalesce(sum(requests), 0) FROM usage"); },
      [&](int64_t counted) { return counted == requests; }, absl::Seconds(10)))
      << "usage counters never reached " << requests;
}

// Another process holds the write lock longer than the store's busy timeout (5 s, fixed: there
// is no flag to shorten it). A miss cannot record its click, so it must not be sent; hits are
// still answered from the store (WAL readers are not blocked by a writer); once the lock is
// released, misses work again.
TEST(FaultStoreTest, WriteLockHeldByAnotherProcess) {
  TempDir dir;
  Simulator sim(dir, kToken);
  auto verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken);
  const std::string db = verdictd->db_path();
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd->stub(), "11.7.0.1", &r).ok());
  // Restart so that the verdict is not in verdictd's in-memory cache: hits must read SQLite.
  ASSERT_EQ(verdictd->Stop(), 0);
  verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken);
  // A miss behind the start-up writes (retention pruning), then no write pending at all.
  ASSERT_TRUE(CheckIp(verdictd->stub(), "11.7.0.2", &r).ok());
  WaitForUsageRequests(db, 2);
  const int64_t sent = sim.Requests();
  ASSERT_EQ(sent, 2);

  sqlite3* locker = nullptr;
  ASSERT_EQ(sqlite3_open_v2(db.c_str(), &locker, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  sqlite3_busy_timeout(locker, 5000);
  ASSERT_EQ(sqlite3_exec(locker, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK)
      << sqlite3_errmsg(locker);

  absl::Time start = absl::Now();
  grpc::Status status = CheckIp(verdictd->stub(), "11.7.0.3", &r);
  const absl::Duration miss_took = absl::Now() - start;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("cannot record the click, so nothing was sent"));
  EXPECT_GE(miss_took, absl::Seconds(4)) << "the store waits out its busy timeout first";
  EXPECT_EQ(sim.Requests(), sent) << "never spend a click that cannot be recorded";

  // Still holding the lock: hits are read from the store, without waiting for it.
  start = absl::Now();
  status = CheckIp(verdictd->stub(), "11.7.0.1", &r);
  const absl::Duration hit_took = absl::Now() - start;
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  EXPECT_LT(hit_took, absl::Seconds(1));
  std::printf("[ measured ] miss under a held write lock failed after %s; a hit took %s\n",
              absl::FormatDuration(miss_took).c_str(), absl::FormatDuration(hit_took).c_str());

  ASSERT_EQ(sqlite3_exec(locker, "ROLLBACK", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(locker);

  status = CheckIp(verdictd->stub(), "11.7.0.3", &r);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(r.source(), pb::SOURCE_UPSTREAM);
  EXPECT_EQ(sim.Requests(), sent + 1);
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM clicks WHERE ip = '11.7.0.3'"), 1)
      << "the refused miss left no ledger row";
}

// Unmounts (lazily) on destruction.
class TmpfsMount {
 public:
  explicit TmpfsMount(const std::string& dir, const std::string& options) : dir_(dir) {
    mkdir(dir.c_str(), 0700);
    if (mount("tmpfs", dir.c_str(), "tmpfs", 0, options.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = std::strerror(errno);
    }
  }
  ~TmpfsMount() {
    if (mounted_) {
      umount2(dir_.c_str(), MNT_DETACH);
    }
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

// Writes to `path` until the file system is full; the bytes written.
int64_t FillDisk(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return -1;
  }
  std::setvbuf(f, nullptr, _IONBF, 0);
  const std::string block(4096, 'F');
  int64_t written = 0;
  for (;;) {
    const size_t n = std::fwrite(block.data(), 1, block.size(), f);
    written += static_cast<int64_t>(n);
    if (n < block.size()) {
      break;
    }
  }
  std::fclose(f);
  return written;
}

// The database on a 1 MiB tmpfs that is then filled: misses fail without being sent, hits are
// still served, and everything works again once space is freed.
TEST(FaultStoreTest, DiskFull) {
  TempDir dir;
  Simulator sim(dir, kToken);
  const std::string mnt = dir.File("small");
  TmpfsMount mount(mnt, "size=1m,mode=0700");
  if (!mount.mounted()) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << mount.error()
                 << "); needs root or CAP_SYS_ADMIN";
  }
  const std::string db = mnt + "/verdicts.db";
  const std::vector<std::string> flags = {"--db=" + db};
  auto verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken, flags);
  pb::CheckIpResponse r;
  ASSERT_TRUE(CheckIp(verdictd->stub(), "11.8.0.1", &r).ok());
  ASSERT_EQ(verdictd->Stop(), 0);
  verdictd = std::make_unique<Verdictd>(dir, sim.url(), kToken, flags);
  ASSERT_TRUE(CheckIp(verdictd->stub(), "11.8.0.2", &r).ok());
  WaitForUsageRequests(db, 2);

  const std::string filler = mnt + "/filler";
  const int64_t filled = FillDisk(filler);
  ASSERT_GT(filled, 0);

  // The WAL may still have room in pages it already holds, so a few writes can succeed; keep
  // missing until one cannot record its click.
  bool refused = false;
  int misses = 0;
  for (int i = 10; i < 60 && !refused; ++i) {
    const std::string ip = absl::StrCat("11.8.0.", i);
    const int64_t before = sim.Requests();
    grpc::Status status = CheckIp(verdictd->stub(), ip, &r);
    const int64_t sent = sim.Requests() - before;
    ++misses;
    SCOPED_TRACE(absl::StrCat(ip, ": ", status.error_message()));
    if (status.ok()) {
      EXPECT_EQ(sent, 1);
      continue;
    }
    ASSERT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    if (absl::StrContains(status.error_message(), "cannot record the click")) {
      EXPECT_EQ(sent, 0) << "never spend a click that cannot be recorded";
      refused = true;
    } else {
      // The ledger row was written, the request sent, and then the verdict could not be stored.
      EXPECT_THAT(status.error_message(), HasSubstr("could not be stored"));
      EXPECT_EQ(sent, 1);
    }
  }
  ASSERT_TRUE(refused) << "no miss was refused after " << misses << " tries on a full disk";
  std::printf("[ measured ] %d misses until the full disk refused one (filler %lld bytes)\n",
              misses, static_cast<long long>(filled));

  // Hits are still served (from SQLite: the verdict was stored before the restart).
  grpc::Status status = CheckIp(verdictd->stub(), "11.8.0.1", &r);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(r.source(), pb::SOURCE_CACHE);
  EXPECT_TRUE(WaitUntil(
      "\"verdict store unusable, health NOT_SERVING\" in the log", [&] { return verdictd->Log(); },
      [](const std::string& log) {
        return absl::StrContains(log, "verdict store unusable, health NOT_SERVING");
      },
      absl::Seconds(10)))
      << verdictd->Log();

  // Space again: misses work.
  ASSERT_EQ(std::remove(filler.c_str()), 0);
  const WaitResult<std::string> recovered = WaitUntil(
      "a miss to succeed again",
      [&] {
        pb::CheckIpResponse again;
        const grpc::Status status = CheckIp(verdictd->stub(), "11.8.1.1", &again);
        return status.ok() ? std::string("OK")
                           : absl::StrCat(status.error_code(), ": ", status.error_message());
      },
      [](const std::string& status) { return status == "OK"; }, absl::Seconds(10));
  EXPECT_TRUE(recovered) << verdictd->Log();
  EXPECT_TRUE(WaitUntil(
      "\"verdict store usable again: health SERVING\" in the log", [&] { return verdictd->Log(); },
      [](const std::string& log) {
        return absl::StrContains(log, "verdict store usable again: health SERVING");
      },
      absl::Seconds(10)))
      << verdictd->Log();
  EXPECT_EQ(verdictd->Stop(), 0);
  verdictd.reset();
  // Every request that reached ClickPatrol is in the ledger.
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM clicks WHERE outcome != 3"), sim.Requests());
}

// A database on a file system that is read-only (root ignores file permissions, a read-only
// mount stops it too): verdictd refuses to start, quickly and naming the file, rather than take
// checks whose clicks it could never record. The file is left as it was.
TEST(FaultStoreTest, ReadOnlyFileSystemAtStartUp) {
  TempDir dir;
  Simulator sim(dir, kToken);
  const std::string mnt = dir.File("ro");
  TmpfsMount mount(mnt, "size=4m,mode=0700");
  if (!mount.mounted()) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << mount.error()
                 << "); needs root or CAP_SYS_ADMIN";
  }
  const std::string db = mnt + "/verdicts.db";
  {
    Verdictd verdictd(dir, sim.url(), kToken, {"--db=" + db});
    pb::CheckIpResponse r;
    ASSERT_TRUE(CheckIp(verdictd.stub(), "11.8.2.1", &r).ok());
    ASSERT_EQ(verdictd.Stop(), 0);
  }
  const std::string before = ReadFileOrEmpty(db);
  ASSERT_FALSE(before.empty());
  ASSERT_EQ(::mount(nullptr, mnt.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, nullptr), 0)
      << std::strerror(errno);

  const std::string log = dir.File("verdictd-ro.log");
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<ChildProcess>> process = ChildProcess::Start(
      {VERDICTD_BIN, "--listen=127.0.0.1:0", "--db=" + db, "--upstream_url=" + sim.url()},
      {{"CLICKPATROL_TOKEN", kToken}}, log);
  ASSERT_TRUE(process.ok()) << process.status();
  absl::StatusOr<int> code = (*process)->Wait(absl::Seconds(20));
  ASSERT_TRUE(code.ok()) << "verdictd kept running on a read-only database";
  EXPECT_EQ(*code, 1);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  const std::string text = ReadFileOrEmpty(log);
  EXPECT_THAT(text, HasSubstr(absl::StrCat("verdictd cannot start: database ", db,
                                           " is not usable: the file is read-only")));
  EXPECT_EQ(ReadFileOrEmpty(db), before) << "the file must be left as it was";
  EXPECT_EQ(sim.Requests(), 1);
}

}  // namespace
}  // namespace verdictd::testing::faults
