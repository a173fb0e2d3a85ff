#!/usr/bin/env bash
# Regenerates agent/src/runtime/seccomp/syscalls_{x86_64,aarch64}.txt ("name number" per line)
# from the kernel's uapi headers (Debian: linux-libc-dev). The tables are kernel ABI facts;
# they change only when the kernel adds syscalls. Run from the repository root.
set -euo pipefail
out=agent/src/runtime/seccomp
resolve() { python3 -c '
import re, sys
defs = {}
for line in sys.stdin:
    m = re.match(r"#define (__NR3264_\w+|__NR_\w+) (\S+)$", line.strip())
    if m: defs[m.group(1)] = m.group(2)
def val(k, depth=0):
    v = defs.get(k)
    if v is None or depth > 5: return None
    if re.fullmatch(r"\(?\d+\)?", v): return int(v.strip("()"))
    return val(v, depth + 1)
rows = sorted((k[5:], val(k)) for k in defs if k.startswith("__NR_") and k not in ("__NR_syscalls",))
for name, n in rows:
    if n is not None: print(name, n)
'; }
echo '#include <asm/unistd_64.h>' | gcc -E -dM - | resolve > "$out/syscalls_x86_64.txt"
echo '#include <asm-generic/unistd.h>' | gcc -E -dM -D__BITS_PER_LONG=64 \
  -D__ARCH_WANT_RENAMEAT -D__ARCH_WANT_NEW_STAT -D__ARCH_WANT_SET_GET_RLIMIT \
  -D__ARCH_WANT_TIME32_SYSCALLS -D__ARCH_WANT_SYS_CLONE3 -D__ARCH_WANT_MEMFD_SECRET - \
  | resolve > "$out/syscalls_aarch64.txt"
wc -l "$out"/syscalls_*.txt
