"""A Ray cluster of several nodes on this machine (``ray.cluster_utils.Cluster``, what Ray's own tests use for
multi-node behaviour), run as a process of its own and driven over stdin: one command a line, one JSON
answer a line on stdout. Each node is its own raylet, object store and worker pool, with its own resources;
removing one kills its processes as a lost machine would (``allow_graceful=False``).

    add            -> {"node": I}          a 1-CPU worker node
    remove I       -> {"removed": I}       node I's raylet, object store and workers killed
    kill-head      -> {"killed": "head"}   the GCS and the head's raylet killed: the cluster is gone
    (end of input)                         everything shut down

The first line out is {"address": GCS_ADDRESS, "nodes": [0, 1, ...]} once the head (no CPUs: nothing runs
there, as on a cluster whose head only coordinates) and ``sys.argv[1]`` worker nodes are up. Token auth is
the environment's (RAY_AUTH_MODE, RAY_AUTH_TOKEN), as for ``ray start``.

``Nodes`` runs it and drives it (the tests, benchmarks/cluster_faults.py).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

STORE = 100 * 2**20


class Nodes:
    """A running cluster of this script, without token auth, its processes' home ``home``: ``address``,
    ``send(command)`` -> its JSON answer, ``close()``."""

    def __init__(self, home: Path, workers: int = 2):
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        self.proc = subprocess.Popen([sys.executable, __file__, str(workers)], text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**env, "HOME": str(home), "RAY_AUTH_MODE": "disabled"})
        first = self.proc.stdout.readline()
        assert first, "the Ray nodes did not start"
        self.address = json.loads(first)["address"]

    def send(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": STORE,
                                                           "include_dashboard": False})
    nodes = {}

    def add():
        nodes[len(nodes)] = cluster.add_node(num_cpus=1, object_store_memory=STORE)
        return len(nodes) - 1

    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
        add()
    print(json.dumps({"address": cluster.address, "nodes": list(nodes)}), flush=True)
    try:
        for line in sys.stdin:
            cmd, *arg = line.split()
            if cmd == "add":
                answer = {"node": add()}
            elif cmd == "remove":
                cluster.remove_node(nodes.pop(int(arg[0])), allow_graceful=False)
                answer = {"removed": int(arg[0])}
            elif cmd == "kill-head":
                cluster.head_node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
                answer = {"killed": "head"}
            else:
                answer = {"error": f"unknown command {cmd}"}
            print(json.dumps(answer), flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
