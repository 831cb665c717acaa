"""Two builds of the same small program, for delta figures that mean something: random bytes have
no common structure for a differ to find, two compiler outputs of one program differing by a
constant have exactly the structure a real release-to-release delta has (code moved by a few
bytes, literal pools and jump tables shifted, one value changed).

The program is a few hundred functions of integer arithmetic, a lookup table and a command
dispatcher, like an MCU application's control loop; ``build_program(tmp, release=N)`` compiles
it with gcc (-Os, the usual size optimisation for firmware) and returns the bytes of the
linked executable. ``release`` changes one constant (a protocol version the firmware reports)
and adds one statement to one function, so build 1 and build 2 differ by a small change.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["FUNCTIONS", "build_program", "program_source"]

FUNCTIONS = 240


def program_source(*, release: int, functions: int = FUNCTIONS) -> str:
    lines = [
        "#include <stdint.h>",
        "#include <stdio.h>",
        f"#define PROTOCOL_VERSION {100 + release}u",
        "static const uint16_t crc_table[256] = {",
        ", ".join(str((i * 0x1021) & 0xFFFF) for i in range(256)),
        "};",
    ]
    for i in range(functions):
        lines += [
            f"uint32_t handler_{i}(uint32_t x) {{",
            f"    uint32_t acc = x ^ {(i * 2654435761) & 0xFFFFFFFF}u;",
            f"    for (int k = 0; k < {3 + i % 7}; k++) {{",
            f"        acc = (acc << {1 + i % 5}) ^ crc_table[(acc >> 8) & 0xFF] ^ {i}u;",
            "    }",
            # The fix a release makes: one more step in one handler, which moves every
            # function after it (what makes real deltas larger than the changed bytes).
            *(["    acc ^= acc >> 3;"] * (i == release % functions)),
            f"    return acc + {i % 13}u;",
            "}",
        ]
    lines.append("typedef uint32_t (*handler_t)(uint32_t);")
    lines.append("static const handler_t handlers[] = {")
    lines.append(", ".join(f"handler_{i}" for i in range(functions)))
    lines += [
        "};",
        "int main(int argc, char **argv) {",
        "    (void)argv;",
        "    uint32_t state = PROTOCOL_VERSION;",
        f"    for (int i = 0; i < {functions}; i++) state = handlers[(state + i) % {functions}]"
        "(state + (uint32_t)argc);",
        '    printf("protocol %u state %u\\n", PROTOCOL_VERSION, state);',
        "    return 0;",
        "}",
    ]
    return "\n".join(lines) + "\n"


def build_program(workdir: Path, *, release: int, functions: int = FUNCTIONS) -> bytes:
    """The linked executable of the program at ``release`` (gcc -Os, no build id, so the same
    release always yields the same bytes)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is not installed (scripts/install-system-deps.sh installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"app-{release}.c"
    binary = workdir / f"app-{release}.elf"
    source.write_text(program_source(release=release, functions=functions))
    subprocess.run(
        [gcc, "-Os", "-Wl,--build-id=none", "-o", str(binary), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return binary.read_bytes()
