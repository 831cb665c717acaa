"""DTLS at fleet scale: N simulated DTLS (PSK) devices start in one burst against a gateway in
its own process; how many register, how fast, and how many handshakes one gateway core does.

Plain script: ``python benchmarks/bench_dtls.py [--devices N] [--deadline S]
[--device-processes K]``. The processes share the machine's cores:

* the gateway, ``manage.py lwm2m_gateway --dtls-bind ... --refuse-nosec`` as in production
  (DTLS devices only), its registry and keys in a throwaway PostgreSQL database
  (``<BENCH_DB_PREFIX>_dtls``, dropped at the end), device events to Redis (database 15, or
  BENCH_REDIS_URL; emptied before and after), its Prometheus metrics on a loopback port;
* K device processes (children of this script), N / K simulated devices each
  (``workers/lwm2m/simulator.py``, ``FleetSpec(dtls=True)``: each its own 16-byte PSK,
  identity = endpoint) in one asyncio loop. Their keys are provisioned through
  ``device_psk_set`` before the gateway starts; each device's DTLS client context is made before
  the burst, then every process is told to go at the same moment and all its devices send
  their registration at once (the handshake comes first).

Figures:

* got in: devices whose registration was answered 2.01 over their DTLS session within
  ``--deadline`` seconds of the burst's start (goal: all of them), and the time the last did;
  the device processes' CPU time beside the gateway's (a device process that saturates its
  core delays its own handshakes: the figure then prices the simulator);
* handshakes completed by the gateway (its ``fwupd_gateway_dtls_handshakes_total`` counter,
  by outcome) and its CPU time (user + system, from /proc) over the burst: handshakes per
  gateway CPU-second is the figure per gateway core (each handshake here carries the
  registration that follows it, and the gateway's device-information reads of the devices that
  got in); handshakes per wall-clock second beside it.

The machine line (CPU, cores, load at start) comes first (``_report``). Exit status 1 when a goal
is missed and ``BENCH_STRICT=1``; 2 when the gateway could not be started or measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _campaign_world as cw  # noqa: E402
from _report import Report  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
HANDSHAKES = re.compile(r'^fwupd_gateway_dtls_handshakes_total\{.*result="(\w+)".*\} ([\d.e+]+)$')
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The whole run (the burst is bounded by --deadline; this bounds set-up and provisioning).
PROVISION_TIMEOUT = 1800


def provision(env: dict[str, str], psks: dict[str, bytes], *, processes: int = 4) -> None:
    """Store every device's key through the product's service, in child (Django) processes."""
    items = sorted(psks.items())
    chunks = [dict(items[i::processes]) for i in range(processes)]
    children = [_provision(env, chunk) for chunk in chunks if chunk]
    for child, body in children:  # each reads all its input at once, then works
        assert child.stdin is not None
        child.stdin.write(body)
        child.stdin.close()
    for child, _ in children:
        child.wait(PROVISION_TIMEOUT)
        if child.returncode:
            raise SystemExit(f"provisioning failed ({child.returncode})")


def _provision(
    env: dict[str, str], psks: dict[str, bytes]
) -> tuple[subprocess.Popen[bytes], bytes]:
    code = (
        "import django, json, sys; django.setup();"
        "from campaigns.device_services import device_psk_set;"
        "[device_psk_set(endpoint=e, key=bytes.fromhex(k))"
        " for e, k in json.load(sys.stdin).items()]"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, env=env, cwd=ROOT)
    return child, json.dumps({e: k.hex() for e, k in psks.items()}).encode()


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def handshakes(metrics_port: int) -> dict[str, float]:
    """The gateway's DTLS handshakes by outcome, from its metrics endpoint."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = HANDSHAKES.match(line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def wait_for_metrics(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode}")
        try:
            handshakes(port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the gateway's metrics never answered") from None
            time.sleep(0.2)


def _fleet(uri: str, count: int, prefix: str) -> Any:
    from workers.lwm2m.simulator import Fleet, FleetSpec

    fleet = Fleet(server_uri=uri, trust_anchors=[])
    fleet.load_or_create(
        FleetSpec(
            count=count,
            prefix=prefix,
            manufacturer="Acme Sensors",
            model="thermo-v2",
            vendor_id="fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
            class_id="1492af14-2569-5e48-bf42-9b2d51f2ab45",
            lifetime=3600,
            dtls=True,
        )
    )
    return fleet


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _device_process(uri: str, count: int, prefix: str, deadline: float) -> None:
    """A device process: keys out, contexts made, then on "go" every device registers at once;
    when each got in (seconds after "go") and this process's CPU time over the burst."""
    fleet = _fleet(uri, count, prefix)
    _say({"psks": {e: k.hex() for e, k in fleet.psks().items()}})
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # keys provisioned, gateway up
    await fleet.open(concurrency=count)
    _say({"ready": True})
    await loop.run_in_executor(None, sys.stdin.readline)  # go
    start, cpu = time.perf_counter(), time.process_time()
    done: list[float] = []

    async def watch(device: Any) -> None:
        await device.registered.wait()
        done.append(time.perf_counter() - start)

    watchers = [asyncio.ensure_future(watch(d)) for d in fleet.devices.values()]
    fleet.begin()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*watchers), deadline)
    cpu = time.process_time() - cpu
    for task in watchers:
        task.cancel()
    await asyncio.sleep(1.0)  # the gateway's reads of the last devices in
    _say({"times": done, "cpu": cpu})
    await fleet.stop(deregister=False)


def _load_burst(
    args: argparse.Namespace,
    env: dict[str, str],
    shares: list[int],
    port: int,
    plain_port: int,
    metrics_port: int,
    tmp: Path,
    cleanup: contextlib.ExitStack,
) -> tuple[list[float], float, float, dict[str, float], dict[str, int]]:
    """The burst with load-simulator device processes (``loadsim --dtls``): keys derived from
    one seed and provisioned, the gateway started, every process builds its devices, then all
    are told ``go`` at once. Returns (times in, reconstructed from the processes' status
    lines; device CPU-seconds; gateway CPU-seconds; gateway handshakes by outcome; the device
    side's DTLS figures)."""
    from bench_fleet import SimProcess

    from workers.lwm2m.loaddtls import psk_for

    seed = secrets.token_hex(32)
    firsts = [sum(shares[:i]) for i in range(len(shares))]
    psks = {f"dtls-{index:06d}": psk_for(seed, f"dtls-{index:06d}") for index in range(sum(shares))}
    began = time.perf_counter()
    provision(env, psks)
    print(
        f"{len(psks):,} DTLS devices provisioned in {time.perf_counter() - began:.1f} s", flush=True
    )
    gateway = _start_gateway(env, port, plain_port, metrics_port)
    cleanup.callback(_stop, gateway)
    wait_for_metrics(metrics_port, gateway)
    # The same vendor and class as the full simulator's fleet (_fleet): the registration
    # reads report them; the gateway does not need them to exist.
    world = {
        "vendor_id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe",
        "class_id": "1492af14-2569-5e48-bf42-9b2d51f2ab45",
    }
    sims: list[SimProcess] = []
    for i, (share, first) in enumerate(zip(shares, firsts, strict=True)):
        spec_file = tmp / f"load-{i}.json"
        spec_file.write_text(
            json.dumps(
                {
                    "server": f"coaps://127.0.0.1:{port}",
                    "count": share,
                    "first": first,
                    "prefix": "dtls",
                    "lifetime": 3600,
                    "register_concurrency": max(share, 1),  # the whole share at once
                    "trust_anchors_pem": [],
                    **world,
                }
            )
        )
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "workers.lwm2m.loadsim", str(spec_file), "--dtls", seed,
                "--wait-for-go", "--status-seconds", "0.25",
            ],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        cleanup.callback(_stop, proc)
        sims.append(SimProcess(proc))
    deadline = time.monotonic() + 300
    while not all(sim.built for sim in sims):
        if time.monotonic() > deadline or any(sim.proc.poll() is not None for sim in sims):
            raise SystemExit("a load-simulator process did not build its devices")
        time.sleep(0.1)
    print(
        f"burst: {sum(shares):,} devices in {len(sims)} load-simulator process(es) start at "
        f"once, {args.deadline:.0f} s to get in",
        flush=True,
    )
    before_cpu, before = cpu_seconds(gateway.pid), handshakes(metrics_port)
    rss_before = rss_bytes(gateway.pid)
    sims_cpu = [cpu_seconds(sim.proc.pid) for sim in sims]
    start = time.time()
    for sim in sims:
        sim.send("go")
    n = sum(shares)
    # (seconds since go, devices in) from the status lines, to find when half were in.
    progress: list[tuple[float, int]] = []
    end = time.monotonic() + args.deadline
    while time.monotonic() < end:
        got = sum(sim.status.get("registered", 0) for sim in sims)
        progress.append((time.time() - start, got))
        if got >= n:
            break
        if any(sim.proc.poll() is not None for sim in sims):
            raise SystemExit("a load-simulator process exited during the burst")
        time.sleep(0.1)
    device_cpu = sum(cpu_seconds(sim.proc.pid) - c for sim, c in zip(sims, sims_cpu, strict=True))
    time.sleep(1.0)  # the gateway's reads of the last devices in
    gateway_cpu = cpu_seconds(gateway.pid) - before_cpu
    after = handshakes(metrics_port)
    grown = rss_bytes(gateway.pid) - rss_before
    completed = after.get("completed", 0.0) - before.get("completed", 0.0)
    if completed:
        print(
            f"INFO gateway memory: RSS grew {grown / 2**20:,.1f} MiB over the burst, "
            f"{grown / completed / 1024:,.1f} KiB per device in (its DTLS session, registration "
            "and reads)"
        )
    for sim in sims:
        sim.send("status")
    time.sleep(0.5)
    got = sum(sim.status.get("registered", 0) for sim in sims)
    last = max((sim.status.get("last_registered", 0.0) for sim in sims), default=0.0) - start
    half = next((t for t, k in progress if k >= (got + 1) // 2), last)
    # The status lines give counts, not each device's time: ``got`` times, half at ``half``
    # and the last at ``last`` (what the report prints).
    times = [half] * (got // 2 + 1) + [last] * (got - got // 2 - 1) if got else []
    figures = {"handshakes": 0, "retransmissions": 0, "restarts": 0}
    for sim in sims:
        for name in figures:
            figures[name] += int(sim.status.get("dtls", {}).get(name, 0))
    outcome = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    return times, device_cpu, gateway_cpu, outcome, figures


def _full_burst(
    args: argparse.Namespace,
    env: dict[str, str],
    shares: list[int],
    port: int,
    plain_port: int,
    metrics_port: int,
    devices: list[subprocess.Popen[str]],
    procs: list[subprocess.Popen[bytes] | None],
) -> tuple[list[float], float, float, dict[str, float], dict[str, int]]:
    """The burst with the full simulator's device processes (an aiocoap DTLS client per
    device); the same figures as :func:`_load_burst`."""
    uri = f"coaps://127.0.0.1:{port}"
    k = len(shares)
    for i, share in enumerate(shares):
        devices.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--deadline",
                    str(args.deadline),
                    "--device-process",
                    uri,
                    str(share),
                    f"dtls{i}",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "LOG_LEVEL": "ERROR"},
            )
        )
    psks: dict[str, bytes] = {}
    for proc in devices:
        psks.update({e: bytes.fromhex(h) for e, h in _read(proc, "psks")["psks"].items()})
    began = time.perf_counter()
    provision(env, psks)
    print(
        f"{args.devices:,} DTLS devices provisioned in {time.perf_counter() - began:.1f} s",
        flush=True,
    )
    gateway = procs[0] = _start_gateway(env, port, plain_port, metrics_port)
    wait_for_metrics(metrics_port, gateway)
    for proc in devices:
        assert proc.stdin is not None
        proc.stdin.write("open\n")
        proc.stdin.flush()
    for proc in devices:
        _read(proc, "ready")
    print(
        f"burst: {args.devices:,} devices in {k} process(es) start at once, "
        f"{args.deadline:.0f} s to get in",
        flush=True,
    )
    before_cpu, before = cpu_seconds(gateway.pid), handshakes(metrics_port)
    for proc in devices:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    times: list[float] = []
    device_cpu = 0.0
    for proc in devices:
        result = _read(proc, "times")
        times.extend(result["times"])
        device_cpu += result["cpu"]
    gateway_cpu = cpu_seconds(gateway.pid) - before_cpu
    after = handshakes(metrics_port)
    outcome = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    return times, device_cpu, gateway_cpu, outcome, {}


def _start_gateway(
    env: dict[str, str], port: int, plain_port: int, metrics_port: int
) -> subprocess.Popen[bytes]:
    """``manage.py lwm2m_gateway`` for DTLS devices only, as in production."""
    return subprocess.Popen(
        [
            sys.executable, str(ROOT / "manage.py"), "lwm2m_gateway",
            "--bind", f"127.0.0.1:{plain_port}", "--dtls-bind", f"127.0.0.1:{port}",
            "--refuse-nosec", "--gateway-id", "bench-dtls", "--metrics-port", str(metrics_port),
        ],
        env=env,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _read(proc: subprocess.Popen[str], key: str) -> dict[str, Any]:
    """The next message of a device process that carries ``key`` (other output passes by)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            message: dict[str, Any] = json.loads(line)
            if key in message:
                return message
    raise SystemExit(f"a device process exited ({proc.wait()}) before it said {key!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument(
        "--deadline", type=float, default=120.0, help="seconds the burst has to get in"
    )
    parser.add_argument("--device-processes", type=int, default=2)
    parser.add_argument(
        "--simulator",
        choices=("load", "full"),
        default="load",
        help="the devices: the load simulator's DTLS clients (workers.lwm2m.loadsim --dtls, "
        "default) or the full simulator's (an aiocoap context per device)",
    )
    parser.add_argument(
        "--device-process", nargs=3, metavar=("URI", "COUNT", "PREFIX"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.device_process:
        uri, count, prefix = args.device_process
        asyncio.run(_device_process(uri, int(count), prefix, args.deadline))
        return 0

    report = Report()
    report.machine()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import redis

    from workers.lwm2m.dtls import dtls_missing
    from workers.lwm2m.ports import claim_udp_port

    missing = dtls_missing()
    if missing is not None:
        report.error(f"DTLS cannot run here: {missing}")
        return report.exit_status()
    redis.Redis.from_url(REDIS_URL).flushdb()
    db = f"{cw.DB_PREFIX}_dtls"
    cw.drop_db(db)
    cw.create_db(db)
    procs: list[subprocess.Popen[bytes] | None] = [None]  # the gateway (full simulator)
    devices: list[subprocess.Popen[str]] = []
    k = max(1, min(args.device_processes, args.devices))
    shares = [args.devices // k + (1 if i < args.devices % k else 0) for i in range(k)]
    with (
        contextlib.ExitStack() as cleanup,
        tempfile.TemporaryDirectory(prefix="fwupd-dtlsbench-") as tmp,
    ):
        cleanup.callback(cw.drop_db, db)
        env = {
            **os.environ,
            "CELERY_BROKER_URL": REDIS_URL,
            "FIRMWARE_STORAGE_ROOT": str(Path(tmp) / "images"),
            "DATABASE_URL": cw.db_url(db),
            # BENCH_LOG_LEVEL=WARNING shows the gateway's lines on failed handshakes.
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "ERROR"),
            "LWM2M_ADMISSION": "provisioned",
        }
        subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"],
            env=env,
            check=True,
        )
        port, plain_port = claim_udp_port("127.0.0.1"), claim_udp_port("127.0.0.1")
        metrics_port = free_tcp_port()
        try:
            if args.simulator == "load":
                times, device_cpu, gateway_cpu, outcome, dtls_figures = _load_burst(
                    args, env, shares, port, plain_port, metrics_port, Path(tmp), cleanup
                )
            else:
                times, device_cpu, gateway_cpu, outcome, dtls_figures = _full_burst(
                    args, env, shares, port, plain_port, metrics_port, devices, procs
                )
        finally:
            for proc in [*devices, *procs]:
                if proc is None:
                    continue
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            redis.Redis.from_url(REDIS_URL).flushdb()

    n, got_in = args.devices, len(times)
    times.sort()
    completed = outcome.get("completed", 0.0)
    outcomes = ", ".join(f"{name} {v:,.0f}" for name, v in sorted(outcome.items()))
    last = times[-1] if times else float("nan")
    half = times[len(times) // 2] if times else float("nan")
    print(
        f"got in: {got_in:,} of {n:,} registered within {args.deadline:.0f} s "
        f"(half by {half:.2f} s, the last at {last:.2f} s)"
    )
    print(
        f"gateway handshakes: {outcomes or 'none'}; CPU over the burst: gateway "
        f"{gateway_cpu:.2f} s, device processes {device_cpu:.2f} s"
    )
    if dtls_figures:
        print(
            f"device side (load simulator): {dtls_figures['handshakes']:,} handshakes, "
            f"{dtls_figures['retransmissions']:,} flights sent again (RFC 6347 timers), "
            f"{dtls_figures['restarts']:,} handshakes started over"
        )
    per_core = completed / gateway_cpu if gateway_cpu else 0.0
    wall = completed / last if times else 0.0
    print(
        f"INFO handshakes/s per gateway core: {per_core:,.0f} "
        f"(completed handshakes / gateway CPU-seconds, each with its registration); "
        f"per wall-clock second: {wall:,.0f}"
    )
    if completed <= 0:
        report.error("the gateway completed no handshake: nothing to measure")
    report.goal(
        f"DTLS devices registered within {args.deadline:.0f} s of one burst",
        got_in,
        at_least=n,
        detail=f"{n - got_in:,} not in" if got_in < n else "",
    )
    return report.exit_status()


if __name__ == "__main__":
    raise SystemExit(main())
