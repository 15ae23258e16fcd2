#!/usr/bin/python3
"""The files in deploy/ name only flags that exist, and hold no secret inline.

Usage: deploy_files_are_honest.py REPO_ROOT

Every command line in deploy/ -- the Dockerfile's ENTRYPOINT and HEALTHCHECK, each compose
file's services (entrypoint, command, healthcheck), verdictd.service's ExecStart -- and every
key of deploy/verdictd.json must name a flag that its program defines (an ABSL_FLAG in that
program's main file: the only place each of them defines flags). A misspelt or removed flag
would otherwise be found only when a container or the unit fails to start (exit 2).

And the secrets stay out of the text:
- no --db value carries a password (user:password@ or password=);
- no environment variable whose name says PASSWORD is given a value (only NAME_FILE, a path);
- a /run/secrets/NAME that a service reads (a flag value or a *_FILE variable) is a secret the
  service mounts, declared at the top level from a file;
- verdictd.json has no token or password key (only a *_file key naming one's file).

Exits 0 when all hold, 1 listing every violation, 77 (skipped) when PyYAML is missing.
"""

import json
import os
import re
import shlex
import sys

try:
    import yaml
except ImportError:  # python3-yaml
    print("deploy_files_are_honest: PyYAML (python3-yaml) is not installed: skipped")
    sys.exit(77)

# Each program, by the file that defines all its flags.
PROGRAM_SOURCES = {
    "verdictd": "server/verdictd_main.cc",
    "verdictctl": "client/verdictctl/verdictctl_main.cc",
    "clickpatrol_sim": "tests/clickpatrol_sim/clickpatrol_sim_main.cc",
}
FLAG_DEFINITION = re.compile(r"\bABSL_FLAG\(\s*[^,()]+(?:\([^)]*\))?\s*,\s*(\w+)\s*,")
PASSWORD_IN_URI = re.compile(r"^[a-z]+://[^/@?]*:[^/@?]*@|[?&]password=", re.IGNORECASE)
SECRET_PATH = re.compile(r"/run/secrets/([\w.-]+)")

problems = []


def load_flags(root):
    flags = {}
    for program, source in PROGRAM_SOURCES.items():
        with open(os.path.join(root, source), encoding="utf-8") as f:
            names = set(FLAG_DEFINITION.findall(f.read()))
        if not names:
            sys.exit(f"deploy_files_are_honest: no ABSL_FLAG found in {source}")
        flags[program] = names
    return flags


def check_args(where, argv, flags):
    """argv: a whole command line, argv[0] the program (a path or a bare name)."""
    if not argv:
        return
    program = os.path.basename(argv[0])
    if program not in flags:
        problems.append(f"{where}: runs {argv[0]}, which is none of {sorted(flags)}")
        return
    for arg in argv[1:]:
        if not arg.startswith("--"):
            continue  # a subcommand (verdictctl health) or a value
        name, _, value = arg[2:].partition("=")
        if name not in flags[program]:
            problems.append(f"{where}: {program} has no flag --{name}")
        if name == "db" and PASSWORD_IN_URI.search(value):
            problems.append(f"{where}: --db carries a password (use --db_password_file)")


def dockerfile_instructions(path):
    """(instruction, rest) pairs, continuation lines joined, comments dropped."""
    joined, current = [], ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            stripped = line.strip()
            if stripped.startswith("#") or not stripped:
                continue
            if stripped.endswith("\\"):
                current += stripped[:-1] + " "
                continue
            joined.append(current + stripped)
            current = ""
    for text in joined:
        instruction, _, rest = text.partition(" ")
        yield instruction.upper(), rest.strip()


def check_dockerfile(root, flags):
    path = os.path.join(root, "deploy/Dockerfile")
    entrypoint = None
    for instruction, rest in dockerfile_instructions(path):
        if instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)
            check_args("deploy/Dockerfile ENTRYPOINT", entrypoint, flags)
        elif instruction == "HEALTHCHECK":
            _, _, cmd = rest.partition("CMD ")
            check_args("deploy/Dockerfile HEALTHCHECK", json.loads(cmd), flags)
    if entrypoint is None:
        problems.append("deploy/Dockerfile: no ENTRYPOINT")
    return entrypoint or []


def as_list(value):
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def check_compose(root, name, image_entrypoint, flags):
    where = f"deploy/{name}"
    with open(os.path.join(root, "deploy", name), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    declared = doc.get("secrets") or {}
    for secret, spec in declared.items():
        if not isinstance(spec, dict) or "file" not in spec:
            problems.append(f"{where}: secret {secret} is not read from a file")
    for service, spec in (doc.get("services") or {}).items():
        here = f"{where} service {service}"
        entrypoint = as_list(spec.get("entrypoint"))
        command = as_list(spec.get("command")) or []
        ours = (spec.get("build") or {}).get("dockerfile") == "deploy/Dockerfile"
        # As Docker does: an entrypoint of the service's own replaces the image's (and its CMD).
        if entrypoint is None:
            entrypoint = image_entrypoint if ours else []
        argv = entrypoint + command
        if ours or (argv and os.path.basename(argv[0]) in flags):
            check_args(here, argv, flags)
        test = (spec.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test and test[0] == "CMD":
            if os.path.basename(test[1]) in flags:
                check_args(f"{here} healthcheck", test[1:], flags)
        mounted = set()
        for entry in spec.get("secrets") or []:
            source = entry if isinstance(entry, str) else entry.get("source")
            mounted.add(source)
            if source not in declared:
                problems.append(f"{here}: mounts secret {source}, which is not declared")
        environment = spec.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(e.partition("=")[::2] for e in environment)
        used = [arg for arg in argv if "/run/secrets/" in arg]
        for variable, value in environment.items():
            if "PASSWORD" in variable.upper() and not variable.upper().endswith("_FILE"):
                problems.append(f"{here}: {variable} is set inline (mount a secret file instead: "
                                f"--db_password_file, or {variable}_FILE where the image reads one)")
            if value is not None and "/run/secrets/" in str(value):
                used.append(str(value))
        for text in used:
            for secret in SECRET_PATH.findall(text):
                if secret not in mounted:
                    problems.append(f"{here}: reads /run/secrets/{secret} but does not mount it")


def check_unit(root, flags):
    path = os.path.join(root, "deploy/verdictd.service")
    with open(path, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    found = False
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            found = True
            check_args("deploy/verdictd.service ExecStart", shlex.split(line[len("ExecStart="):]),
                       flags)
    if not found:
        problems.append("deploy/verdictd.service: no ExecStart")


def check_config(root, flags):
    with open(os.path.join(root, "deploy/verdictd.json"), encoding="utf-8") as f:
        config = json.load(f)
    for key in config:
        if ("token" in key or "password" in key) and not key.endswith("_file"):
            problems.append(f"deploy/verdictd.json: key {key} holds a secret (name a file)")
        elif key not in flags["verdictd"] or key == "config":
            problems.append(f"deploy/verdictd.json: verdictd has no flag --{key} to set")
    check_args("deploy/verdictd.json", ["verdictd"] + [
        f"--db={v}" for k, v in config.items() if k == "db"], flags)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    flags = load_flags(root)
    image_entrypoint = check_dockerfile(root, flags)
    composes = sorted(n for n in os.listdir(os.path.join(root, "deploy"))
                      if re.fullmatch(r"compose(\..+)?\.ya?ml", n))
    if not composes:
        problems.append("deploy/: no compose file")
    for name in composes:
        check_compose(root, name, image_entrypoint, flags)
    check_unit(root, flags)
    check_config(root, flags)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"deploy/: Dockerfile, {', '.join(composes)}, verdictd.service, verdictd.json: "
          "every flag exists, no secret inline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
