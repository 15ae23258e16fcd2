#!/usr/bin/python3
"""Security check (issue: no SQL built by string concatenation).

Every SQL statement verdictd runs must be fixed text: values travel only as bound parameters.
This scans the non-test sources under src/ and fails when
  1. a call that runs SQL (sqlite3_prepare*, sqlite3_exec, and the store's Exec/Prepare/QueryText
     helpers) gets anything but a string literal, a choice between two literals, a k-constant
     (optionally indexed), or one of the reviewed pass-throughs in ALLOWED_ARGUMENTS, or
  2. a string is assembled (StrCat, StrFormat, StrAppend, +) from a literal that starts with an
     SQL keyword, except the reviewed lines in ALLOWED_ASSEMBLY.

Usage: sql_is_never_concatenated.py SRC_DIR
"""
import pathlib
import re
import sys

SQL_CALLS = re.compile(
    r"\b(sqlite3_prepare(?:_v2|_v3)?|sqlite3_exec|Exec|Prepare|QueryText)\s*\(")
# Reviewed non-literal arguments: the helpers' own `sql` parameter, PrepareAll's table of
# k-constants, and the schema version pragma (an integer constant, see ALLOWED_ASSEMBLY).
ALLOWED_ARGUMENTS = {"sql", "it->second", "set_version.c_str()"}
CONSTANT = re.compile(r"^k[A-Z]\w*(\[\w+\])?$")
LITERAL = re.compile(r'^(\s*"([^"\\]|\\.)*"\s*)+$')
# cond ? "literal" : "literal"
CHOICE = re.compile(r'^[^"?]+\?\s*"([^"\\]|\\.)*"\s*:\s*"([^"\\]|\\.)*"$')
SQL_KEYWORD_LITERAL = re.compile(
    r'"\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|PRAGMA|ATTACH|WITH|BEGIN)\b', re.I)
ASSEMBLY = re.compile(r"\b(StrCat|StrFormat|StrAppend|Substitute)\s*\(|\"\s*\+|\+\s*\"")
ALLOWED_ASSEMBLY = {'absl::StrCat("PRAGMA user_version = ", kSchemaVersion)'}


def arguments(text, open_paren):
    """The top-level arguments of the call whose '(' is at open_paren."""
    args, depth, start, i, in_string = [], 0, open_paren + 1, open_paren + 1, False
    while i < len(text):
        c = text[i]
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                args.append(text[start:i].strip())
                return args
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    return args


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: " " * len(m.group(0)), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def check(path):
    problems = []
    text = strip_comments(path.read_text())
    for match in SQL_CALLS.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        args = arguments(text, match.end() - 1)
        before = text[max(0, match.start() - 40):match.start()]
        # Declarations and definitions of the helpers themselves: "Stmt> Prepare(sqlite3* db, ...".
        if len(args) < 2 or re.search(r"(Status|Stmt>|std::string>|bool)\s*$", before):
            continue
        sql = args[1]
        if (LITERAL.match(sql) or CHOICE.match(sql) or CONSTANT.match(sql) or
                sql in ALLOWED_ARGUMENTS):
            continue
        problems.append(f"{path}:{line}: {match.group(1)} runs SQL from `{sql}`, which is "
                        "neither a literal nor a k-constant")
    for number, line in enumerate(text.split("\n"), start=1):
        if SQL_KEYWORD_LITERAL.search(line) and ASSEMBLY.search(line):
            if any(allowed in line for allowed in ALLOWED_ASSEMBLY):
                continue
            problems.append(f"{path}:{number}: SQL text assembled at run time: {line.strip()}")
    return problems


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    sources = sorted(p for p in root.rglob("*.cc") if not p.name.endswith("_test.cc"))
    problems = [problem for path in sources for problem in check(path)]
    for problem in problems:
        print(problem)
    calls = sum(len(SQL_CALLS.findall(strip_comments(p.read_text()))) for p in sources)
    print(f"{len(sources)} files, {calls} SQL call sites checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
