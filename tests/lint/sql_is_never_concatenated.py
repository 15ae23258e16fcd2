#!/usr/bin/python3
"""Security check (issue: no SQL built by string concatenation).

Every SQL statement verdictd runs must be fixed text: values travel only as bound parameters.
This scans the non-test sources under the given folders and fails when
  1. a call that runs SQL (sqlite3_prepare*, sqlite3_exec, libpq's PQexec*/PQprepare/PQsend*,
     and the stores' Exec/Prepare/QueryText helpers) gets anything but a string literal, a choice between two literals, a k-constant
     (optionally indexed), or one of the reviewed pass-throughs in ALLOWED_ARGUMENTS, or
  2. a string is assembled at run time from a literal that starts with an SQL keyword: an
     argument of StrCat/StrFormat/StrAppend/Substitute (over any number of lines), or an operand
     of +, += or .append(), except the reviewed calls in ALLOWED_ASSEMBLY.
Check 1 is the safeguard; check 2 catches assembled SQL before it reaches a call.

Usage: sql_is_never_concatenated.py DIR...
"""
import pathlib
import re
import sys

SQL_CALLS = re.compile(
    r"\b(sqlite3_prepare(?:_v2|_v3)?|sqlite3_exec|Exec|Prepare|QueryText|"
    r"PQexec|PQexecParams|PQsendQuery|PQsendQueryParams|PQprepare|PQsendPrepare)\s*\(")
# Where each call takes its SQL text (0-based argument index); the others take it second.
SQL_ARGUMENT = {"PQprepare": 2, "PQsendPrepare": 2}
# Reviewed non-literal arguments: the helpers' own `sql` parameter, PrepareAll's table of
# k-constants, the schema version pragma (an integer constant, see ALLOWED_ASSEMBLY), and the
# PostgreSQL connection's Prepare, whose `sql` points at one of postgres_schema.h's k-constants.
ALLOWED_ARGUMENTS = {"sql", "it->second", "set_version.c_str()", "sql->text"}
CONSTANT = re.compile(r"^k[A-Z]\w*(\[\w+\])?$")
LITERAL = re.compile(r'^(\s*"([^"\\]|\\.)*"\s*)+$')
# cond ? "literal" : "literal"
CHOICE = re.compile(r'^[^"?]+\?\s*"([^"\\]|\\.)*"\s*:\s*"([^"\\]|\\.)*"$')
SQL_KEYWORD_LITERAL = re.compile(
    r'^"\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|PRAGMA|ATTACH|WITH|BEGIN)\b', re.I)
ASSEMBLY_CALL = re.compile(r"\b(StrCat|StrFormat|StrAppend|Substitute)\s*\(")
OPERATOR_WITH_SQL = re.compile(
    r'(\+=?|\.append\()\s*"\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|PRAGMA|'
    r'ATTACH|WITH|BEGIN)\b|"\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|PRAGMA|'
    r'ATTACH|WITH|BEGIN)\b([^"\\]|\\.)*"\s*\+', re.I)
ALLOWED_ASSEMBLY = {'StrCat("PRAGMA user_version = ", kSchemaVersion)'}


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
    """`text` with comments blanked out (newlines kept), string and char literals left alone."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def check(path):
    problems = []
    text = strip_comments(path.read_text())
    for match in SQL_CALLS.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        args = arguments(text, match.end() - 1)
        before = text[max(0, match.start() - 40):match.start()]
        # Declarations and definitions of the helpers themselves: "Stmt> Prepare(sqlite3* db, ...".
        index = SQL_ARGUMENT.get(match.group(1), 1)
        if len(args) <= index or re.search(r"(Status|Stmt>|std::string>|bool)\s*$", before):
            continue
        sql = args[index]
        if (LITERAL.match(sql) or CHOICE.match(sql) or CONSTANT.match(sql) or
                sql in ALLOWED_ARGUMENTS):
            continue
        problems.append(f"{path}:{line}: {match.group(1)} runs SQL from `{sql}`, which is "
                        "neither a literal nor a k-constant")
    for match in ASSEMBLY_CALL.finditer(text):
        args = arguments(text, match.end() - 1)
        if not any(SQL_KEYWORD_LITERAL.match(arg) for arg in args):
            continue
        call = match.group(1) + "(" + ", ".join(args) + ")"
        if " ".join(call.split()) in ALLOWED_ASSEMBLY:
            continue
        line = text.count("\n", 0, match.start()) + 1
        problems.append(f"{path}:{line}: SQL text assembled at run time: {' '.join(call.split())}")
    for number, line in enumerate(text.split("\n"), start=1):
        if OPERATOR_WITH_SQL.search(line):
            problems.append(f"{path}:{number}: SQL text assembled at run time: {line.strip()}")
    return problems


def main():
    roots = [pathlib.Path(arg) for arg in sys.argv[1:]]
    if not roots or not all(root.is_dir() for root in roots):
        sys.exit("usage: sql_is_never_concatenated.py DIR... (each an existing folder)")
    sources = sorted(p for root in roots for p in root.rglob("*.cc")
                     if not p.name.endswith("_test.cc"))
    if not sources:
        sys.exit("no sources found: the check would pass vacuously")
    problems = [problem for path in sources for problem in check(path)]
    for problem in problems:
        print(problem)
    calls = sum(len(SQL_CALLS.findall(strip_comments(p.read_text()))) for p in sources)
    print(f"{len(sources)} files, {calls} SQL call sites checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
