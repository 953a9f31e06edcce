"""Small ELF files for the library tests, compiled with gcc: a shared
library with a soname, and a program linked against one."""

from __future__ import annotations

import subprocess
from pathlib import Path

LIBRARY_C = "int rh_answer(void) { return 42; }\n"
PROGRAM_C = "int rh_answer(void);\nint main(void) { return rh_answer() == 42 ? 0 : 1; }\n"


def compile_library(work: Path, soname: str) -> bytes:
    """A shared library whose DT_SONAME is ``soname`` (libfoo.so.1)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "lib.c").write_text(LIBRARY_C)
    so = work / soname
    subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(so), str(work / "lib.c")], check=True)
    return so.read_bytes()


def compile_program(work: Path, name: str, soname: str) -> bytes:
    """A program that needs ``soname`` (compiled by compile_library in ``work`` first)."""
    (work / "main.c").write_text(PROGRAM_C)
    program = work / name
    subprocess.run(["gcc", "-o", str(program), str(work / "main.c"), f"-L{work}", f"-l:{soname}"], check=True)
    return program.read_bytes()
