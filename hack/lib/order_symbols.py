#!/usr/bin/env python3
"""The layout of the image's binary: which functions go first.

    order_symbols.py profile BINARY OUT PROFILE...
        callgrind profiles (--dump-instr=yes --compress-pos=no) of BINARY's
        roles -> OUT, the functions they ran by their demangled names
        (hack/agent.order, made by hack/profile-startup.sh). Functions that
        more roles run come first, and functions run by the same set of roles
        stay together, so each role's code is a few contiguous runs.

    order_symbols.py link BINARY ORDER OUT
        ORDER's names -> OUT, the symbols of BINARY that carry them, for the
        linker's --symbol-ordering-file (hack/build-image.sh). Prints how many
        of ORDER's names BINARY has.

Names are demangled (v0 mangling keeps generic arguments, so they are
precise) without crate hashes or LTO suffixes, which change with the
compiler, the flags and the dependencies; the symbols themselves do not
survive any of those.
"""

import bisect
import re
import subprocess
import sys

LTO_SUFFIX = re.compile(r"\.llvm\.\d+$|\.(?:cold|part|isra|constprop)\.\d+$")


def symbols(binary):
    """(address, size, mangled, stable name) of every function."""

    def nm(*flags):
        return subprocess.run(
            ["nm", "--print-size", "--defined-only", *flags, binary],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()

    raw, demangled = nm(), nm("--demangle")
    if len(raw) != len(demangled):
        sys.exit("order_symbols: nm listed the symbols differently when demangling")
    out = []
    for r, d in zip(raw, demangled):
        rp, dp = r.split(None, 3), d.split(None, 3)
        if len(rp) == 4 and rp[2] in "tTwW":
            out.append((int(rp[0], 16), int(rp[1], 16), rp[3], stable(dp[3])))
    out.sort()
    return out


def stable(name):
    return LTO_SUFFIX.sub("", name.strip())


def profile(binary, out, profiles):
    syms = symbols(binary)
    starts = [s[0] for s in syms]
    roles, first, size = {}, {}, {}
    address = re.compile(r"^0x([0-9a-f]+) ")
    for index, path in enumerate(profiles):
        with open(path) as lines:
            for line in lines:
                m = address.match(line)
                if not m:
                    continue
                addr = int(m.group(1), 16)
                i = bisect.bisect_right(starts, addr) - 1
                if i < 0 or addr >= syms[i][0] + syms[i][1]:
                    continue
                name = syms[i][3]
                roles.setdefault(name, set()).add(index)
                first.setdefault(name, len(first))
                size[syms[i][2]] = syms[i][1]
    order = sorted(roles, key=lambda n: (-len(roles[n]), sorted(roles[n]), first[n]))
    with open(out, "w") as f:
        f.write("".join(name + "\n" for name in order))
    print(
        f"order_symbols: {len(order)} functions ({sum(size.values())} bytes)"
        f" from {len(profiles)} profiles -> {out}",
        file=sys.stderr,
    )


def link(binary, order_path, out):
    by_name = {}
    for _, _, mangled, name in symbols(binary):
        by_name.setdefault(name, []).append(mangled)
    with open(order_path) as f:
        order = [line.rstrip("\n") for line in f if line.strip()]
    found = [n for n in order if n in by_name]
    with open(out, "w") as f:
        for name in found:
            # Sorted: the same binary gives the same file, whatever its layout.
            f.write("".join(m + "\n" for m in sorted(by_name[name])))
    print(f"{len(found)} of {len(order)}")


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "profile":
        profile(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) == 5 and sys.argv[1] == "link":
        link(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
