"""Static checks of a wheel that no interpreter here can run, or not before these pass
(ci/wheels-musl.sh, ci/wheels-macos-windows.sh).

    python ci/wheel_inspect.py WHEEL

Reads the wheel's platform tag, takes its one compiled module out, and checks with LLVM's
tools (Debian's llvm package) what a loader on that platform needs: the CPU architecture,
the minimum OS version that the tag promises (macOS), the exported module init function,
and that every library it links is one that platform always has (never a libpython on
macOS or Linux, and on Windows only the python3X.dll of its own version: a DLL that
mingw-w64 could bring, such as libgcc_s or libwinpthread, is not shipped in the wheel). On
musl, also that no thread-local uses the initial-exec model, which musl's loader refuses in
a library that is opened at run time. Prints one line per wheel; exits 1 with the reasons
when a check fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

# A program of Debian's llvm package: the unversioned name, else the newest llvm-N one.
LLVM_VERSIONS = range(25, 13, -1)


def llvm(tool: str, *args: str) -> str:
    for name in (tool, *(f"{tool}-{v}" for v in LLVM_VERSIONS)):
        path = shutil.which(name)
        if path:
            run = subprocess.run([path, *args], capture_output=True, text=True, check=True)
            return run.stdout
    raise SystemExit(f"{tool} not found (Debian's llvm package)")


def exported(path: Path, *nm_args: str) -> set[str]:
    """The names of the defined external symbols (`--dynamic`: of an ELF file's dynamic table)."""
    args = ("--extern-only", "--defined-only", "--format=just-symbols", *nm_args, str(path))
    return set(llvm("llvm-nm", *args).split())


def check_elf_musl(path: Path, arch: str, problems: list[str]) -> str:
    headers = llvm("llvm-readobj", "--file-headers", "--needed-libs", str(path))
    machine = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64"}[arch]
    if machine not in headers:
        problems.append(f"not an {arch} ELF file")
    needed = re.findall(r"^\s+(\S+\.so[.\d]*)\s*$", headers.split("NeededLibraries", 1)[-1], re.M)
    # musl's loader answers libc.so (and its own names) with itself.
    others = [n for n in needed if not re.fullmatch(r"libc\.so|libc\.musl-\w+\.so\.1", n)]
    if others:
        problems.append(f"links {others}: only musl's libc may be linked")
    relocations = llvm("llvm-readobj", "--relocations", str(path))
    if re.search(r"R_X86_64_(TPOFF64|GOTTPOFF)|R_AARCH64_TLSIE", relocations):
        problems.append("initial-exec thread-locals: musl refuses them in a dlopen()ed library")
    if "PyInit__moka_py" not in exported(path, "--dynamic"):
        problems.append("PyInit__moka_py is not exported")
    return f"ELF {arch}, links {', '.join(needed)}"


def check_macho(path: Path, arch: str, minimum: str, problems: list[str]) -> str:
    headers = llvm("llvm-objdump", "--macho", "--private-headers", str(path))
    cpu = {"arm64": "ARM64", "x86_64": "X86_64"}[arch]
    if not re.search(rf"^\s*MH_MAGIC_64\s+{cpu}\s", headers, re.M):
        problems.append(f"not a 64-bit Mach-O file for {arch}")
    found = re.findall(r"cmd LC_BUILD_VERSION.*?\n\s*minos ([\d.]+)", headers, re.S)
    found += re.findall(r"cmd LC_VERSION_MIN_MACOSX.*?\n\s*version ([\d.]+)", headers, re.S)
    if not found:
        problems.append("no minimum macOS version")
    elif tuple(map(int, found[0].split("."))) > tuple(map(int, minimum.split("."))):
        problems.append(f"needs macOS {found[0]}, the tag promises {minimum}")
    dylibs = re.findall(r"cmd LC_LOAD(?:_WEAK)?_DYLIB.*?\n\s*name (\S+)", headers, re.S)
    foreign = [d for d in dylibs if not d.startswith(("/usr/lib/", "/System/Library/"))]
    if foreign:
        problems.append(f"links {foreign}: only the system's libraries may be linked")
    if "_PyInit__moka_py" not in exported(path):
        problems.append("PyInit__moka_py is not exported")
    return f"Mach-O {arch}, macOS {found[0] if found else '?'}+, links {', '.join(dylibs)}"


# What every Windows has (and python.org's CPython links itself).
WINDOWS_DLLS = re.compile(
    r"(kernel32|ntdll|advapi32|bcrypt|bcryptprimitives|ws2_32|userenv|msvcrt|ucrtbase|"
    r"vcruntime140|api-ms-win-[\w-]+)\.dll",
    re.I,
)


def check_pe(path: Path, version: str, problems: list[str]) -> str:
    headers = llvm("llvm-readobj", "--file-headers", "--coff-imports", "--coff-exports", str(path))
    if "IMAGE_FILE_MACHINE_AMD64" not in headers:
        problems.append("not an x86_64 (AMD64) PE file")
    dlls = re.findall(r"^\s*Name: (\S+\.dll)\s*$", headers, re.M | re.I)
    python = f"python{version.replace('.', '')}.dll"
    if python not in (d.lower() for d in dlls):
        problems.append(f"does not import {python}")
    foreign = [d for d in dlls if d.lower() != python and not WINDOWS_DLLS.fullmatch(d)]
    if foreign:
        problems.append(f"imports {foreign}: not part of Windows, and not in the wheel")
    exports = re.findall(r"^\s*Name: (\w+)\s*$", headers.split("Export {", 1)[-1], re.M)
    if "PyInit__moka_py" not in exports:
        problems.append("PyInit__moka_py is not exported")
    return f"PE x86_64, imports {', '.join(dlls)}"


def main(wheel_path: str) -> int:
    wheel = Path(wheel_path)
    # moka_py-0.1.0-cp313-cp313-macosx_11_0_arm64.whl
    _, _, python_tag, _, platform = wheel.stem.split("-")
    version = f"{python_tag[2]}.{python_tag[3:].rstrip('t')}"
    problems: list[str] = []
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        modules = [
            n
            for n in zf.namelist()
            if PurePosixPath(n).name.startswith("_moka_py.") and n.endswith((".so", ".pyd"))
        ]
        if len(modules) != 1:
            print(f"{wheel.name}: not one compiled module: {modules}", file=sys.stderr)
            return 1
        path = Path(zf.extract(modules[0], tmp))
        if m := re.fullmatch(r"musllinux_\d+_\d+_(x86_64|aarch64)", platform):
            summary = check_elf_musl(path, m[1], problems)
        elif m := re.fullmatch(r"macosx_(\d+)_(\d+)_(arm64|x86_64)", platform):
            summary = check_macho(path, m[3], f"{m[1]}.{m[2]}", problems)
        elif platform == "win_amd64":
            summary = check_pe(path, version, problems)
        else:
            print(f"{wheel.name}: no checks for platform {platform}", file=sys.stderr)
            return 1
    for p in problems:
        print(f"{wheel.name}: {p}", file=sys.stderr)
    print(f"{wheel.name}: {summary}{'' if problems else ': ok'}")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} WHEEL")
    sys.exit(main(sys.argv[1]))
