#!/usr/bin/python3
"""Architecture check: the engine knows the store and ClickPatrol only through their interfaces.

Every file of the engine (server/engine/, tests included) may include the C++ and POSIX headers,
Abseil, spdlog, the common types (common/), the storage contract (storage/verdict_store.h), the
upstream interface (server/upstream/clickpatrol_client.h) and its own folder. It fails on any
header of gRPC or protobuf (grpc/, grpcpp/, google/protobuf/, the generated verdict/...), of
SQLite (sqlite3.h), of libcurl (curl/), of libpq (libpq-fe.h, postgresql/) and on any include of
another part of this repository (a backend such as storage/sqlite/, the libcurl client, the
gRPC service), which would pull one of those in indirectly.

Usage: engine_includes_no_infrastructure.py ENGINE_DIR
"""
import pathlib
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]', re.M)
FORBIDDEN = re.compile(
    r"^(grpc|grpcpp|grpc\+\+|google/protobuf|verdict/|sqlite3|curl/|libpq|postgresql/|pg_)")
# Repository paths the engine may include; any other path of a repository folder is refused.
REPO_FOLDERS = ("server/", "storage/", "client/", "tests/", "common/", "bench/", "fuzz/", "proto/")
ALLOWED_REPO = ("common/", "server/engine/", "storage/verdict_store.h",
                "server/upstream/clickpatrol_client.h")


def problems_in(path):
    text = path.read_text(encoding="utf-8")
    for match in INCLUDE.finditer(text):
        header = match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        if FORBIDDEN.match(header):
            yield f"{path}:{line}: the engine includes an infrastructure header: {header}"
        elif header.startswith(REPO_FOLDERS) and not header.startswith(ALLOWED_REPO):
            yield f"{path}:{line}: the engine includes {header}, not an interface it may know"


def main():
    if len(sys.argv) != 2 or not pathlib.Path(sys.argv[1]).is_dir():
        sys.exit("usage: engine_includes_no_infrastructure.py ENGINE_DIR")
    files = sorted(p for p in pathlib.Path(sys.argv[1]).rglob("*") if p.suffix in (".h", ".cc"))
    if not files:
        sys.exit("no engine sources found: the check would pass vacuously")
    problems = [problem for path in files for problem in problems_in(path)]
    for problem in problems:
        print(problem)
    print(f"{len(files)} engine files checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
