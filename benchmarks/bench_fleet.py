"""Fleet benchmark: gateways, Celery workers and a load-simulated fleet, each in processes of
their own, on PostgreSQL and Redis.

For each gateway count (``--gateways``, default 1 and 2; the gateways share one UDP port as an
SO_REUSEPORT group) a run on a fresh database: N load-simulator devices (``workers.lwm2m.loadsim``,
a loopback address each, spread over ``--sim-processes`` processes) register; a 3-stage campaign
takes them from 1.0.0 to 1.1.0 (``--max-in-flight`` per stage, a 64 KiB image; this process
plays Celery beat); then the same devices download the same envelope and image with no campaign
at the same concurrency. Prints, per run: registrations/s per gateway process, device events/s
applied into PostgreSQL by the workers, the most downloads at once, the campaign's wall time
against the plain download (goal <= 1.5), how the CPU time split between gateways, workers,
PostgreSQL backends and the load simulator, and the memory of a simulated device; then the
campaign's wall time with 1 gateway against 2 (goal >= 1.8x).

N is ``--devices``, default ``BENCH_FLEET_DEVICES`` or 100,000. The machine is shared: its load
is printed at start and end.

``--dtls``: the devices speak DTLS (PSK) to the gateways (``loadsim --dtls``, keys derived from
one seed and provisioned through ``device_psk_set`` before the gateways start). A DTLS listener
binds its port alone (no SO_REUSEPORT group: a session lives in one process), so each gateway
gets a coaps port of its own and the load-simulator processes are dealt to the gateways in turn
(at least one per gateway), as a source-address-affine load balancer would. Printed besides:
handshakes per gateway process (its ``fwupd_gateway_dtls_handshakes_total``), per second of the
registration phase and per CPU-second of that gateway over it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import _campaign_world as cw
from _report import Report, ratio_line

CAMPAIGN_RATIO_MAX = 1.5
GATEWAY_SCALING_MIN = 1.8
CLK_TCK = os.sysconf("SC_CLK_TCK")
BROKER = os.environ.get("BENCH_REDIS_URL") or os.environ.get(
    "CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"
)

SPEC = """
apiVersion: fwupd/v1
kind: Campaign
name: bench-fleet
release: thermo-1.1.0
target:
  device_class: acme.example/thermo-v2
stages:
  - name: canary
    size: 10%
    max_in_flight: {m}
  - name: wave
    size: 40%
    max_in_flight: {m}
  - name: all
    size: rest
    max_in_flight: {m}
timeouts:
  device: 10m
retries:
  max: 2
  backoff: 5s
  on: [connection_lost, dispatch_failed, timed_out]
"""


def _log(msg: str) -> None:
    print(f"   [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- CPU accounting ---------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its reaped children (None: gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command: state is field 3; utime 14, stime 15, cutime 16, cstime 17.
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


class CpuMeter:
    """Samples the CPU time of named groups of processes once a second (PostgreSQL backends are
    found by database name each time: they come and go with connections). A process's last
    sample counts, so a backend that lived less than a second is missed."""

    def __init__(self, db_name: str) -> None:
        self.db_name = db_name
        self.groups: dict[str, list[int]] = {}
        self.last: dict[int, float] = {}
        self.group_of: dict[int, str] = {}
        self.downloads_now = 0
        self.max_downloads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, group: str, pid: int) -> None:
        self.group_of[pid] = group

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _backends(self) -> list[int]:
        import psycopg

        try:
            with psycopg.connect(cw.ADMIN_URL, connect_timeout=3) as conn:
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.db_name,)
                ).fetchall()
        except psycopg.Error:
            return []
        return [int(r[0]) for r in rows]

    def sample(self) -> None:
        for pid in self._backends():
            self.group_of.setdefault(pid, "database")
        for pid in list(self.group_of):
            value = cpu_seconds(pid)
            if value is not None:
                self.last[pid] = value

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, value in self.last.items():
            group = self.group_of[pid]
            out[group] = out.get(group, 0.0) + value
        return out

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()


# --- processes --------------------------------------------------------------------------------
class Processes:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        log = (self.log_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv,
            cwd=cw.REPO,
            env=self.env,
            stdout=kwargs.pop("stdout", log),
            stderr=log,
            **kwargs,
        )
        self.procs.append(proc)
        return proc

    def wait_line(self, name: str, text: bytes, timeout: float = 120) -> None:
        path = self.log_dir / f"{name}.log"
        deadline = time.monotonic() + timeout
        while text not in path.read_bytes():
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} not ready in {timeout} s:\n{path.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class SimProcess:
    """One load-simulator process: its status lines read on a thread, commands on stdin."""

    def __init__(self, proc: subprocess.Popen[Any]) -> None:
        self.proc = proc
        self.status: dict[str, Any] = {}
        self.built: dict[str, Any] = {}
        self.answers: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if "built" in data:
                self.built = data
            elif "download" in data or "error" in data:
                self.answers.append(data)
            else:
                self.status = data

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


# --- one run (child process, Django set up on its own database) -----------------------------
def _setup_django(db: str, storage: str, queue: str, prefix: str) -> None:
    os.environ.update(
        {
            "DATABASE_URL": cw.db_url(db),
            "FIRMWARE_STORAGE_ROOT": storage,
            "DJANGO_SETTINGS_MODULE": "_fleet_settings",
            "BENCH_FLEET_QUEUE": queue,
            "CELERY_BROKER_URL": BROKER,
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "LWM2M_COMMAND_BUS_URL": BROKER,
            "METRICS_TALLY_PREFIX": prefix,
        }
    )
    import django

    django.setup()


def _provision_psks(seed: str, endpoints: list[str]) -> None:
    """Each device's DTLS key, derived from the fleet's seed, stored through the product's
    service (in child processes: one transaction per key)."""
    from bench_dtls import provision

    from workers.lwm2m.loaddtls import psk_for

    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cw.REPO), str(here)])}
    provision(env, {e: psk_for(seed, e) for e in endpoints}, processes=4)


def child_run(args: argparse.Namespace) -> dict[str, Any]:
    from bench_dtls import free_tcp_port, handshakes

    from campaigns import services
    from campaigns.device_services import device_report_keys_register
    from campaigns.models import Campaign, CampaignStatus, Device, Rollout, RolloutState
    from campaigns.spec import parse_spec
    from manifests.suit import keys
    from ops import tallies
    from workers.lwm2m import loadsim
    from workers.lwm2m.ports import claim_udp_port
    from workers.tasks import campaign_reconcile_task

    n, gateways, queue = args.devices, args.gateway_count, args.queue
    world = cw.make_world(image_payload=args.image_kib * 1024)
    port = claim_udp_port("127.0.0.1")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(cw.REPO), str(Path(__file__).resolve().parent)]),
        "LWM2M_ADMISSION": "open",
        "LWM2M_ACCEPT_NOSEC": "1",
        "LWM2M_FW_POLL_SECONDS": "10",
        "LWM2M_MAX_REGISTRATIONS": str(n + 1000),
        "LOG_LEVEL": "WARNING",
    }
    log_dir = Path(tempfile.mkdtemp(prefix="bench-fleet-logs-"))
    procs = Processes(env, log_dir)
    meter = CpuMeter(args.db)
    sims: list[SimProcess] = []
    result: dict[str, Any] = {"devices": n, "gateways": gateways, "log_dir": str(log_dir)}
    psk_seed = secrets.token_hex(32) if args.dtls else ""
    # Per gateway: its coaps port and metrics port (DTLS only).
    dtls_ports: list[tuple[int, int]] = []
    gateway_pids: list[int] = []
    if args.dtls:
        began = time.perf_counter()
        _provision_psks(psk_seed, [f"load-{i:06d}" for i in range(n)])
        _log(f"{n} DTLS keys provisioned in {time.perf_counter() - began:.1f} s")
        dtls_ports = [(claim_udp_port("127.0.0.1"), free_tcp_port()) for _ in range(gateways)]
    try:
        for i in range(args.workers):
            proc = procs.start(
                f"worker-{i}",
                [
                    sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo",
                    "-Q", queue, "-n", f"{queue}-{i}@%h", "--without-gossip",
                    "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
                ],
            )  # fmt: skip
            meter.add("workers", proc.pid)
        gateway_ids = [f"{queue}-gw{i}" for i in range(gateways)]
        for i, gateway_id in enumerate(gateway_ids):
            dtls_args = (
                ["--dtls-bind", f"127.0.0.1:{dtls_ports[i][0]}", "--refuse-nosec",
                 "--metrics-port", str(dtls_ports[i][1])]
                if args.dtls
                else []
            )  # fmt: skip
            proc = procs.start(
                gateway_id,
                [
                    sys.executable, "manage.py", "lwm2m_gateway", "--bind",
                    f"127.0.0.1:{port}", "--reuse-port", "--gateway-id", gateway_id,
                    *dtls_args,
                ],
            )  # fmt: skip
            meter.add("gateways", proc.pid)
            gateway_pids.append(proc.pid)
        for gateway_id in gateway_ids:
            procs.wait_line(gateway_id, b" on coap://")
        anchors = [keys.public_key_pem(world.author_key.public_key()).decode()]
        report_seed = secrets.token_hex(32)
        sim_processes = max(args.sim_processes, gateways) if args.dtls else args.sim_processes
        per = math.ceil(n / sim_processes)
        meter.start()
        gateway_cpu = [cpu_seconds(pid) or 0.0 for pid in gateway_pids]
        start = time.perf_counter()
        for k in range(sim_processes):
            count = min(per, n - k * per)
            if count <= 0:
                break
            spec_file = log_dir / f"sim-{k}.json"
            spec: dict[str, Any] = {
                "server": (
                    f"coaps://127.0.0.1:{dtls_ports[k % gateways][0]}"
                    if args.dtls
                    else f"coap://127.0.0.1:{port}"
                ),
                "count": count,
                "first": k * per,
                "vendor_id": str(world.vendor.uuid),
                "class_id": str(world.thermo.uuid),
                "trust_anchors_pem": anchors,
                "lifetime": 3600,
                "register_concurrency": args.register_concurrency,
                "report_seed": report_seed,
                "psk_seed": psk_seed,
            }
            # Provisioning: each device's report key registered before it first registers.
            device_report_keys_register(
                keys=loadsim.report_public_keys(loadsim.LoadFleetSpec(**spec)), actor="bench"
            )
            spec_file.write_text(json.dumps(spec))
            proc = procs.start(
                f"sim-{k}",
                [sys.executable, "-m", "workers.lwm2m.loadsim", str(spec_file)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            meter.add("load simulator", proc.pid)
            sims.append(SimProcess(proc))

        # Registration.
        deadline = time.monotonic() + args.timeout
        while sum(s.status.get("registered", 0) for s in sims) < n:
            if time.monotonic() > deadline or any(s.proc.poll() is not None for s in sims):
                raise SystemExit("the fleet did not register in time")
            time.sleep(0.2)
        register_s = max(s.status["last_registered"] for s in sims) - min(
            s.status["started_at"] for s in sims
        )
        if args.dtls:
            result["dtls"] = [
                {
                    "handshakes": handshakes(metrics).get("completed", 0.0),
                    "cpu": (cpu_seconds(pid) or 0.0) - before,
                }
                for (_, metrics), pid, before in zip(
                    dtls_ports, gateway_pids, gateway_cpu, strict=True
                )
            ]
            result["dtls_devices"] = {
                name: sum(s.status.get("dtls", {}).get(name, 0) for s in sims)
                for name in ("handshakes", "retransmissions", "restarts")
            }
        while Device.objects.filter(online=True, firmware_version="1.0.0").count() < n:
            if time.monotonic() > deadline:
                raise SystemExit("the registry did not show the fleet in time")
            time.sleep(0.5)
        registry_s = time.perf_counter() - start
        per_gateway = dict(Device.objects.values_list("gateway_id").annotate(**_count()).order_by())
        result.update(
            register_s=register_s,
            registry_s=registry_s,
            per_gateway={g: per_gateway.get(g, 0) for g in gateway_ids},
            sim_rss=[s.status.get("rss", 0) for s in sims],
            sim_built=[s.built for s in sims],
        )
        _log(f"{n} devices registered in {register_s:.1f} s (registry {registry_s:.1f} s)")

        if args.register_only:
            return result

        # Campaign.
        meter.sample()
        cpu_before = meter.totals()
        events_before = tallies.snapshot(queues=[]).events_applied
        spec = parse_spec(SPEC.format(m=args.max_in_flight), source="bench-fleet.yaml")
        start = time.perf_counter()
        campaign, _ = services.campaign_apply(spec=spec, actor=world.ops, source="bench")
        max_downloads = 0
        status = campaign.status
        last_beat = 0.0
        queue_lengths: list[int] = []
        lags: list[float] = []
        while status == CampaignStatus.RUNNING and time.perf_counter() - start < args.timeout:
            # Beat: a reconcile every 0.5 s while the queue is empty, else every 5 s at most
            # (reconciles sent faster than the workers run them would only queue up).
            snap = tallies.snapshot(queues=[queue])
            queued_now = int(snap.queue_lengths.get(queue, 0))
            queue_lengths.append(queued_now)
            if snap.event_lag_seconds is not None:
                lags.append(snap.event_lag_seconds)
            since = time.monotonic() - last_beat
            if since >= 5 or (since >= 0.5 and not queued_now):
                campaign_reconcile_task.delay(campaign.pk)
                last_beat = time.monotonic()
            max_downloads = max(
                max_downloads,
                sum(s.status.get("stats", {}).get("downloading", 0) for s in sims),
            )
            time.sleep(0.2)
            status = Campaign.objects.get(pk=campaign.pk).status
        campaign_s = time.perf_counter() - start
        meter.sample()
        cpu_after = meter.totals()
        events = tallies.snapshot(queues=[]).events_applied - events_before
        succeeded = Rollout.objects.filter(campaign=campaign, state=RolloutState.SUCCEEDED).count()
        _log(f"campaign {status} in {campaign_s:.1f} s, {succeeded} succeeded")
        result.update(
            campaign_status=str(status),
            campaign_s=campaign_s,
            succeeded=succeeded,
            events=events,
            max_downloads=max_downloads,
            queue_mean=sum(queue_lengths) / max(1, len(queue_lengths)),
            queue_max=max(queue_lengths, default=0),
            lag_mean=sum(lags) / max(1, len(lags)),
            lag_max=max(lags, default=0.0),
            cpu={g: cpu_after.get(g, 0.0) - cpu_before.get(g, 0.0) for g in cpu_after},
        )

        # The same devices, the same bytes, no campaign.
        manifest = world.release.manifest
        uri = f"coap://127.0.0.1:{port}/fw/m/{manifest.manifest_digest}"
        share = max(1, args.max_in_flight // len(sims))
        start = time.perf_counter()
        for sim in sims:
            sim.answers.clear()
            sim.send(f"download {uri} {share}")
        while not all(s.answers for s in sims):
            if time.perf_counter() - start > args.timeout:
                raise SystemExit("the plain download did not finish in time")
            time.sleep(0.1)
        download_s = time.perf_counter() - start
        answers = [s.answers[0].get("download", {}) for s in sims]
        result.update(
            download_s=download_s,
            download_ok=sum(a.get("ok", 0) for a in answers),
            download_failed=sum(a.get("failed", 0) for a in answers),
            download_max=sum(a.get("max_downloading", 0) for a in answers),
        )
        _log(f"plain download in {download_s:.1f} s")
        for sim in sims:
            sim.send("status")
        time.sleep(1.5)
        result["sim_rss_end"] = [s.status.get("rss", 0) for s in sims]
    finally:
        meter.stop()
        for sim in sims:
            if sim.proc.poll() is None and sim.proc.stdin is not None:
                try:
                    sim.send("quit")
                    sim.proc.stdin.close()
                except OSError:
                    pass
        procs.stop_all()
        import redis

        client = redis.Redis.from_url(BROKER)
        client.delete(queue, *(f"fwupd:lwm2m:gw:{queue}-gw{i}:cmd" for i in range(gateways)))
        client.delete(*(f"{args.tally_prefix}{k}" for k in ("dispatches", "device-events")))
        client.close()
    return result


def _count() -> dict[str, Any]:
    from django.db.models import Count

    return {"n": Count("id")}


# --- parent -----------------------------------------------------------------------------------
def run(gateways: int, args: argparse.Namespace, storage: str) -> dict[str, Any] | None:
    db = f"{cw.DB_PREFIX}_fleet{gateways}"
    cw.clone_db(db)
    queue = f"bench-fleet-{uuid.uuid4().hex[:8]}"
    try:
        command = [
            sys.executable, __file__, "--child", "--db", db, "--storage", storage,
            "--queue", queue, "--tally-prefix", f"{queue}:metrics:",
            "--gateway-count", str(gateways), "--devices", str(args.devices),
            "--workers", str(args.workers), "--sim-processes", str(args.sim_processes),
            "--max-in-flight", str(args.max_in_flight), "--image-kib", str(args.image_kib),
            "--timeout", str(args.timeout),
            "--register-concurrency", str(args.register_concurrency),
            *(["--register-only"] if args.register_only else []),
            *(["--dtls"] if args.dtls else []),
        ]  # fmt: skip
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"!! run with {gateways} gateway(s) failed (exit {proc.returncode})")
            print(proc.stdout[-3000:])
            return None
        return dict(json.loads(lines[-1][len("RESULT ") :]))
    finally:
        cw.drop_db(db)


def report_run(r: dict[str, Any], report: Report) -> None:
    n, g = r["devices"], r["gateways"]
    print(f"{g} gateway process(es), {n:,} devices")
    print(
        f"  registration              {r['register_s']:8.1f} s  ({n / r['register_s']:,.0f}/s; "
        f"registry shows all after {r['registry_s']:.1f} s)"
    )
    for gateway_id, count in sorted(r["per_gateway"].items()):
        print(
            f"    {gateway_id:28} {count:8,} devices, {count / r['register_s']:,.0f} "
            "registrations/s"
        )
    for i, gw in enumerate(r.get("dtls", [])):
        per_cpu = gw["handshakes"] / gw["cpu"] if gw["cpu"] else 0.0
        print(
            f"    gateway {i} DTLS            {gw['handshakes']:8,.0f} handshakes, "
            f"{gw['handshakes'] / r['register_s']:,.0f}/s, {per_cpu:,.0f} per gateway "
            f"CPU-second ({gw['cpu']:.1f} s CPU over the registration)"
        )
    if "dtls_devices" in r:
        d = r["dtls_devices"]
        print(
            f"    devices' side              {d['handshakes']:,} handshakes, "
            f"{d['retransmissions']:,} flights sent again, {d['restarts']:,} started over"
        )
    built = r["sim_built"]
    baseline = sum(b.get("rss_before", 0) for b in built)
    idle = sum(b.get("rss", 0) for b in built) - baseline
    registered = sum(r["sim_rss"]) - baseline
    print(
        f"  load simulator memory     {idle / max(n, 1):,.0f} B/device built, "
        f"{registered / max(n, 1):,.0f} B/device registered (RSS above the interpreter's "
        f"{baseline / 2**20 / max(len(built), 1):,.0f} MiB; {sum(r['sim_rss']) / 2**20:,.0f} "
        f"MiB in {len(built)} process(es))"
    )
    if "campaign_s" not in r:
        print("  campaign and plain download: not run (--register-only)")
        return
    print(
        f"  campaign (3 stages)       {r['campaign_s']:8.1f} s  {r['campaign_status']}, "
        f"{r['succeeded']:,} of {n:,} succeeded"
    )
    print(
        f"  plain download            {r['download_s']:8.1f} s  ({r['download_ok']:,} ok, "
        f"{r['download_failed']:,} failed)"
    )
    print(
        f"  events applied            {r['events']:,} ({r['events'] / r['campaign_s']:,.0f}/s "
        "into PostgreSQL during the campaign)"
    )
    print(
        f"  downloads at once         {r['max_downloads']:,} in the campaign, "
        f"{r['download_max']:,} in the plain download"
    )
    if "queue_mean" in r:
        print(
            f"  workers' queue            {r['queue_mean']:,.0f} tasks waiting on average, "
            f"{r['queue_max']:,} at most; event lag (gateway to PostgreSQL) "
            f"{r['lag_mean']:,.1f} s on average, {r['lag_max']:,.1f} s at most"
        )
    cpu = r["cpu"]
    total = sum(cpu.values()) or 1.0
    parts = ", ".join(
        f"{name} {sec:,.1f} s ({100 * sec / total:.0f}%)"
        for name, sec in sorted(cpu.items(), key=lambda kv: -kv[1])
    )
    print(f"  CPU during the campaign   {parts}; wall {r['campaign_s']:.1f} s")
    print(
        ratio_line(
            "  side by side",
            [("plain download", r["download_s"]), ("campaign", r["campaign_s"])],
            "s",
            reference="plain download",
        )
    )
    if r["succeeded"] != n:
        report.error(f"{g} gateway(s): {n - r['succeeded']:,} devices did not succeed")
    if r["download_failed"]:
        report.error(f"{g} gateway(s): {r['download_failed']:,} plain downloads failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--devices", type=int, default=int(os.environ.get("BENCH_FLEET_DEVICES", "100000"))
    )
    parser.add_argument("--gateways", default="1,2", help="gateway counts to run, e.g. 1,2")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument(
        "--sim-processes", type=int, default=0, help="load-simulator processes (0: 1 per 50,000)"
    )
    parser.add_argument("--max-in-flight", type=int, default=500)
    parser.add_argument("--register-concurrency", type=int, default=500)
    parser.add_argument("--image-kib", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per phase")
    parser.add_argument(
        "--register-only",
        action="store_true",
        help="registrations and memory only (no campaign, no plain download, no goals)",
    )
    parser.add_argument(
        "--dtls", action="store_true", help="devices over DTLS (PSK); prints handshakes/s"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--tally-prefix", help=argparse.SUPPRESS)
    parser.add_argument("--gateway-count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sim_processes <= 0:
        args.sim_processes = max(1, math.ceil(args.devices / 50_000))
    if args.child:
        _setup_django(args.db, args.storage, args.queue, args.tally_prefix)
        print("RESULT " + json.dumps(child_run(args)), flush=True)
        return 0

    counts = sorted({int(c) for c in args.gateways.split(",") if c.strip()})
    report = Report()
    report.machine()
    print(
        f"fleet: {args.devices:,} devices in {args.sim_processes} load-simulator process(es), "
        f"{args.workers} Celery worker(s), gateways {counts}, {args.max_in_flight} in flight "
        f"per stage, image {args.image_kib} KiB"
    )
    cw.create_template()
    results: dict[int, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="fwupd-bench-fleet-") as storage:
            for g in counts:
                r = run(g, args, storage)
                if r is None:
                    report.error(f"the run with {g} gateway(s) failed")
                    continue
                results[g] = r
                report_run(r, report)
    finally:
        cw.drop_db(cw.TEMPLATE_DB)
    for g, r in sorted(results.items()):
        if "campaign_s" not in r:
            continue
        report.goal(
            f"campaign / plain download wall time ({g} gateway(s))",
            r["campaign_s"] / r["download_s"],
            at_most=CAMPAIGN_RATIO_MAX,
            detail=f"N = {r['devices']:,}",
        )
    if 1 in results and 2 in results:
        one, two = results[1], results[2]
        print(
            ratio_line(
                "registrations/s",
                [("1 gateway", one["devices"] / one["register_s"]),
                 ("2 gateways", two["devices"] / two["register_s"])],
                "/s",
                reference="1 gateway",
            )
        )  # fmt: skip
    if all("campaign_s" in results.get(g, {}) for g in (1, 2)):
        one, two = results[1], results[2]
        report.goal(
            "campaign wall time 1 gateway / 2 gateways",
            one["campaign_s"] / two["campaign_s"],
            at_least=GATEWAY_SCALING_MIN,
            detail=f"{one['campaign_s']:.1f} s vs {two['campaign_s']:.1f} s",
        )
    return report.exit_status()


if __name__ == "__main__":
    raise SystemExit(main())
