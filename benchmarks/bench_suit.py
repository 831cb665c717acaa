"""Decode+verify of one SUIT envelope against the bare `cryptography` verify of its signature.

Plain script: ``python benchmarks/bench_suit.py [--iterations N] [--repeats R]``. Prints the
median per-operation time (µs) over R repeats of N operations, for ES256 and Ed25519:

* raw     - ``public_key.verify(signature, Sig_structure)`` only: the same signature over the same
            Sig_structure bytes the codec verifies (ES256: DER-converted beforehand);
* cold    - ``verify_envelope(decode_envelope(data, cache=False), [key])``: a full strict decode
            from bytes every time, no decode cache (what a first look at an envelope costs);
* warm    - ``verify_envelope(decode_envelope(data), [key])``: the decode is remembered for the
            exact bytes, as when the product re-verifies a stored envelope; the signature is
            verified in full every time;
* decode  - ``decode_envelope(data, cache=False)`` alone;
* general - cold decode+verify of an envelope the exact-layout fast path does not cover (the
            same release with suit-text), i.e. the general decoder; for information.

The measurements are interleaved (one batch of each per repeat) so machine load hits them alike;
ratios are medians of the per-repeat ratios. Goal (the performance issue): cold/raw <= 1.10 for
both algorithms; a PASS/MISS line per algorithm says whether it is met (``_report``: exit status
1 on a MISS only with ``BENCH_STRICT=1``). The machine line (CPU, cores, load) comes first.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import SUIT_COLD_RATIO_MAX as GOAL
from _report import Report, ratio_line
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from manifests import suit
from manifests.suit.cose import sig_structure


def _batch_us(fn: Callable[[], object], iterations: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(iterations):
        fn()
    return (time.perf_counter_ns() - start) / iterations / 1000


def _measure(
    fns: dict[str, Callable[[], object]], iterations: int, repeats: int
) -> dict[str, list[float]]:
    """Per-repeat µs per operation of each function, batches interleaved."""
    for fn in fns.values():  # warm up caches and the allocator
        for _ in range(min(iterations, 200)):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_batch_us(fn, iterations))
    return samples


def _params() -> suit.ManifestParams:
    vendor = suit.vendor_id("acme.example")
    image = b"\x5a" * 65536
    return suit.ManifestParams(
        vendor_id=vendor,
        class_id=suit.class_id(vendor, "thermo-v2"),
        sequence_number=1042,
        version="2.4.1+17",
        security_counter=12,
        image_digest=hashlib.sha256(image).digest(),
        image_size=len(image),
        uri="coaps://fw.acme.example/fw/2.4.1+17.bin",
        use_before=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        component_id=(b"\x00",),
        payload_format="mcuboot",
    )


def bench(alg: str, iterations: int, repeats: int) -> dict[str, float]:
    key = suit.generate_private_key(alg)
    public = key.public_key()
    params = _params()
    data = suit.create_envelope(params, keys=[key])
    general_data = suit.create_envelope(
        dataclasses.replace(params, text={"model-name": "thermo-v2"}), keys=[key]
    )
    suit.clear_decode_cache()
    env = suit.decode_envelope(data, cache=False)
    block = env.signatures[0]
    tbs = sig_structure(block.protected, env.digest_bstr)
    if alg == "ES256":
        assert isinstance(public, ec.EllipticCurvePublicKey)
        der = encode_dss_signature(
            int.from_bytes(block.signature[:32], "big"), int.from_bytes(block.signature[32:], "big")
        )
        algorithm = ec.ECDSA(hashes.SHA256())

        def raw() -> None:
            public.verify(der, tbs, algorithm)  # type: ignore[union-attr]
    else:

        def raw() -> None:
            public.verify(block.signature, tbs)  # type: ignore[call-arg]

    raw()  # raises if the signature were not the envelope's valid one

    def cold() -> None:
        if not suit.verify_envelope(suit.decode_envelope(data, cache=False), [public]).ok:
            raise SystemExit("verification failed")

    def warm() -> None:
        if not suit.verify_envelope(suit.decode_envelope(data), [public]).ok:
            raise SystemExit("verification failed")

    def decode() -> None:
        suit.decode_envelope(data, cache=False)

    def general() -> None:
        if not suit.verify_envelope(suit.decode_envelope(general_data, cache=False), [public]).ok:
            raise SystemExit("verification failed")

    samples = _measure(
        {"raw": raw, "cold": cold, "warm": warm, "decode": decode, "general": general},
        iterations,
        repeats,
    )
    figures = {name: statistics.median(values) for name, values in samples.items()}
    for name in ("cold", "warm", "general"):
        figures[f"{name}_ratio"] = statistics.median(
            mine / base for mine, base in zip(samples[name], samples["raw"], strict=True)
        )
    figures["bytes"] = len(data)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    report = Report()
    report.machine()
    print(f"median of {args.repeats} x {args.iterations} operations, µs per operation")
    results = {}
    for alg in ("ES256", "Ed25519"):
        f = results[alg] = bench(alg, args.iterations, args.repeats)
        print(
            f"{alg:8} envelope {int(f['bytes'])} B | raw verify {f['raw']:6.1f} | "
            f"decode+verify cold {f['cold']:6.1f} (ratio {f['cold_ratio']:.3f}) | "
            f"warm {f['warm']:6.1f} (ratio {f['warm_ratio']:.3f}) | "
            f"decode alone {f['decode']:5.1f} | "
            f"general path {f['general']:6.1f} (ratio {f['general_ratio']:.3f})"
        )
        print(
            ratio_line(
                f"  {alg} medians",
                [("raw", f["raw"]), ("cold", f["cold"]), ("warm", f["warm"])],
                "µs",
                reference="raw",
            )
        )
    for alg, f in results.items():
        report.goal(
            f"{alg}: uncached decode+verify / raw verify",
            f["cold_ratio"],
            at_most=GOAL,
            detail=f"cold {f['cold']:.1f} µs, raw {f['raw']:.1f} µs in this run",
        )
    return report.exit_status()


if __name__ == "__main__":
    raise SystemExit(main())
