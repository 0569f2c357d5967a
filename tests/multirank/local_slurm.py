"""A real Slurm cluster on this machine for tests: munged, slurmctld and one slurmd per node.

Two topologies:

- **two nodes**: each ``slurmd`` runs in its own network namespace (a veth on a private bridge,
  its own address) and UTS namespace (its own hostname), so a job's ranks on different nodes talk
  over TCP between distinct addresses, as on a cluster; a hosts file bind-mounted over
  ``/etc/hosts`` in each node's mount namespace resolves the node names. Needs root,
  ``iproute2`` and a kernel (or gVisor) that allows network namespaces.
- **one node**: a single ``slurmd`` on the host's own name, for machines without namespaces.

Everything lives in a temporary directory (config, state, spool, logs, munge socket), on ports
nobody else uses; :meth:`LocalSlurm.stop` cancels the jobs, stops every daemon and removes the
namespaces and bridge it made.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.dist_env import free_port

COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo")


def missing_requirement() -> str | None:
    """Why no local Slurm can start here, or None."""
    absent = [c for c in COMMANDS if shutil.which(c) is None]
    if absent:
        return f"Slurm / munge not installed ({absent}); apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "starting slurmd / munged needs root"
    return None


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def namespaces_work(probe: str) -> bool:
    """Whether this machine lets root make a network namespace with a veth into it."""
    if shutil.which("ip") is None or shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    try:
        _run("ip", "netns", "add", probe)
        try:
            _run("ip", "link", "add", f"{probe}v", "type", "veth", "peer", "name", "eth0",
                 "netns", probe)
            _run("ip", "link", "del", f"{probe}v")
        finally:
            _run("ip", "netns", "del", probe)
    except subprocess.CalledProcessError:
        return False
    return True


@dataclass
class LocalSlurm:
    """One Slurm cluster in ``root``; ``nodes`` > 1 puts each slurmd in its own namespaces."""

    root: Path
    nodes: int
    tag: str = field(default_factory=lambda: f"adx{os.getpid() % 100000}")
    procs: list[subprocess.Popen] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)

    @property
    def subnet(self) -> str:
        # a /24 per test process, away from common private ranges
        return f"10.213.{os.getpid() % 250}"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.root / "slurm.conf"))

    def node_names(self) -> list[str]:
        if self.nodes == 1:
            return [socket.gethostname().split(".")[0]]
        return [f"{self.tag}n{i}" for i in range(1, self.nodes + 1)]

    # ---- set-up ------------------------------------------------------------------------------
    def start(self) -> None:
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(exist_ok=True)
        try:
            if self.nodes > 1:
                self._make_network()
            self._write_config()
            self._start_daemons()
            self._wait_idle(timeout=60)
        except BaseException:
            self.stop()
            raise

    def _make_network(self) -> None:
        bridge, names = f"{self.tag}br", self.node_names()
        _run("ip", "link", "add", bridge, "type", "bridge")
        self.netns.append(bridge)                  # removed with the namespaces in stop()
        _run("ip", "addr", "add", f"{self.subnet}.1/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        (self.root / "hosts").write_text("127.0.0.1 localhost\n" + "".join(
            f"{self.subnet}.{10 + i} {name}\n" for i, name in enumerate(names, start=1)))
        for i, name in enumerate(names, start=1):
            self.netns.append(name)
            _run("ip", "netns", "add", name)
            _run("ip", "link", "add", f"{name}v", "type", "veth", "peer", "name", "eth0",
                 "netns", name)
            _run("ip", "link", "set", f"{name}v", "master", bridge)
            _run("ip", "link", "set", f"{name}v", "up")
            _run("ip", "-n", name, "addr", "add", f"{self.subnet}.{10 + i}/24", "dev", "eth0")
            _run("ip", "-n", name, "link", "set", "eth0", "up")
            _run("ip", "-n", name, "link", "set", "lo", "up")

    def _write_config(self) -> None:
        root, names = self.root, self.node_names()
        if self.nodes == 1:
            ctl = names[0]
            node_lines = [f"NodeName={ctl} CPUs={os.cpu_count()} State=UNKNOWN"]
        else:
            ctl = f"{self.tag}ctl({self.subnet}.1)"
            node_lines = [f"NodeName={name} NodeAddr={self.subnet}.{10 + i} NodeHostname={name} "
                          f"CPUs={os.cpu_count()} State=UNKNOWN"
                          for i, name in enumerate(names, start=1)]
        sock = root / "munge" / "munge.sock"
        (root / "slurm.conf").write_text("\n".join([
            "ClusterName=adamixci", f"SlurmctldHost={ctl}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={sock}",
            f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool' / '%n'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.%n.pid'}",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/builtin", "MpiDefault=none", "ReturnToService=2",
            "JobRequeue=1",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.%n.log'}",
            *node_lines,
            f"PartitionName=ci Nodes={','.join(names)} Default=YES MaxTime=INFINITE State=UP "
            "OverSubscribe=YES", ""]))

    def _start_daemons(self) -> None:
        root, env = self.root, self.env
        sock = root / "munge" / "munge.sock"
        key = Path("/etc/munge/munge.key")
        if not key.is_file():
            _run("mungekey", "--create", "--keyfile", str(key))
        # a file-system socket: the daemons in other network namespaces reach it too
        self.procs.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
             f"--pid-file={root / 'munge' / 'munged.pid'}",
             f"--log-file={root / 'log' / 'munged.log'}",
             f"--seed-file={root / 'munge' / 'seed'}"], env=env))
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.nodes == 1:
            self.procs += [subprocess.Popen(["slurmctld", "-D", "-i"], env=env),
                           subprocess.Popen(["slurmd", "-D"], env=env)]
            return
        # slurmctld checks that its host name is the configured controller's
        ctl = f"{self.tag}ctl"
        self.procs.append(subprocess.Popen(
            ["unshare", "--uts", "sh", "-c", f'hostname {ctl} && exec slurmctld -D -i'],
            env=env))
        # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup tree slurmd needs.
        # A private mount namespace puts the cluster's hosts file over /etc/hosts for the node's
        # daemon and everything its jobs start.
        for name in self.node_names():
            (root / "spool" / name).mkdir(exist_ok=True)
            self.procs.append(subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{name}", "unshare", "--mount", "--uts", "sh", "-c",
                 f"mount --bind {root / 'hosts'} /etc/hosts && hostname {name} && "
                 f"exec slurmd -D -N {name}"], env=env))

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        want = ["idle"] * self.nodes
        while True:
            states = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env,
                                    capture_output=True, text=True).stdout.split()
            if states == want:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm nodes never became idle ({states!r})\n{self.logs()}")
            time.sleep(0.5)

    # ---- use and tear-down -------------------------------------------------------------------
    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted((self.root / "log").glob("*.log")))

    def stop(self) -> None:
        """Cancel every job, stop every daemon, remove the namespaces and the bridge."""
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True)
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        bridge = f"{self.tag}br"
        for name in reversed(self.netns):
            if name == bridge:
                subprocess.run(["ip", "link", "del", bridge], capture_output=True)
                continue
            # the host end first: not every network stack drops it with the namespace
            subprocess.run(["ip", "link", "del", f"{name}v"], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.netns.clear()
