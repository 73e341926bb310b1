"""The launch template's IMDS rule, applied for real: in a network namespace of its own, the
iptables line from the user data of both IaC variants (with a 127.0.0.0/8 address standing in
for the instance metadata address 169.254.169.254) stops the worker's uid from connecting
there, while root (the ECS agent) still connects, and the worker's uid still reaches other
addresses (a stand-in for the ECS credential endpoint 169.254.170.2, which the worker needs).
No traffic leaves the namespace's loopback. Run by deploy/test-stack; needs root, ip(8),
iptables and setpriv (.ci/run installs iptables).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = [ROOT / "deploy/cloudformation/embatch.yaml", ROOT / "deploy/terraform/modules/embatch/main.tf"]
METADATA = "169.254.169.254"
STAND_IN = "127.0.0.2"          # plays 169.254.169.254
OTHER = "127.0.0.3"             # plays 169.254.170.2, the ECS credential endpoint
WORKER_UID = 10001
PORT = 8080


class Failed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)
    print(f"  ok  {what}", flush=True)


def rule_lines() -> list[str]:
    lines = []
    for path in TEMPLATES:
        found = re.findall(r"^\s*(iptables .*)$", path.read_text(), re.MULTILINE)
        check(len(found) == 1, f"{path.relative_to(ROOT)}: one iptables line in the user data")
        lines.append(found[0].strip())
    return lines


def sh(ns: str, *args: str, uid: int | None = None, check_rc: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", "netns", "exec", ns]
    if uid is not None:
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, check=check_rc, timeout=30)


CONNECT = textwrap.dedent("""
    import socket, sys
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
            print(s.recv(16).decode())
    except OSError as e:
        print(f"refused: {e}")
        sys.exit(1)
""")

SERVE = textwrap.dedent("""
    import socket, sys
    servers = []
    for address in sys.argv[2:]:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, int(sys.argv[1])))
        s.listen()
        servers.append(s)
    print("ready", flush=True)
    import selectors
    sel = selectors.DefaultSelector()
    for s in servers:
        sel.register(s, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            conn, _ = key.fileobj.accept()
            conn.sendall(b"metadata")
            conn.close()
""")


def main() -> int:
    lines = rule_lines()
    check(lines[0] == lines[1], "CloudFormation and Terraform carry the same iptables line")
    rule = lines[0]
    check(f"--destination {METADATA}" in rule and f"--uid-owner {WORKER_UID}" in rule and "--jump REJECT" in rule,
          f"the rule rejects uid {WORKER_UID} to {METADATA}: {rule}")
    dockerfile = (ROOT / "docker/Dockerfile").read_text()
    check(re.search(rf"^USER {WORKER_UID}\b", dockerfile, re.MULTILINE) is not None,
          f"the worker image runs as uid {WORKER_UID}")
    if os.geteuid() != 0:
        raise Failed("needs root (network namespaces, iptables)")

    ns = f"embatch-imds-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    server = None
    try:
        sh(ns, "ip", "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVE, str(PORT), STAND_IN, OTHER],
                                  stdout=subprocess.PIPE, text=True)
        check(server.stdout.readline().strip() == "ready", f"a stand-in metadata service on {STAND_IN}:{PORT}")
        before = sh(ns, sys.executable, "-c", CONNECT, STAND_IN, str(PORT), uid=WORKER_UID, check_rc=False)
        check(before.returncode == 0, f"without the rule, uid {WORKER_UID} connects (the premise)")
        stand_in_rule = rule.replace(METADATA, STAND_IN).split()
        sh(ns, *stand_in_rule)
        worker = sh(ns, sys.executable, "-c", CONNECT, STAND_IN, str(PORT), uid=WORKER_UID, check_rc=False)
        check(worker.returncode == 1 and "refused" in worker.stdout,
              f"with the rule, uid {WORKER_UID} cannot connect: {worker.stdout.strip()}")
        agent = sh(ns, sys.executable, "-c", CONNECT, STAND_IN, str(PORT), check_rc=False)
        check(agent.returncode == 0 and "metadata" in agent.stdout, "root (the ECS agent) still connects")
        other = sh(ns, sys.executable, "-c", CONNECT, OTHER, str(PORT), uid=WORKER_UID, check_rc=False)
        check(other.returncode == 0, f"uid {WORKER_UID} still reaches other addresses (the ECS credential endpoint)")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print("deploy/test_imds_block.py: passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (Failed, subprocess.CalledProcessError) as e:
        print(f"deploy/test_imds_block.py: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
