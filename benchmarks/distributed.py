"""Data-parallel timings: synchronized batch norm and a training step on P ranks.

    python -m fastnorm.benchmarks.distributed --ranks 1,2,4   # spawns mpiexec -n P for each P
    mpiexec -n 2 python -m fastnorm.benchmarks.distributed    # one row, for the ranks it runs on

(from a source checkout, ``python -m benchmarks.distributed``). The global batch
is fixed and split among the ranks (strong scaling). Each rank runs one thread
(fastnorm and BLAS), so P ranks use P cores when the machine has them. Reported per
case: the median time of a call (a sync batch-norm forward+backward, or one Solver
step), the slowest rank's; and the share of it spent inside MPI calls, averaged over
the ranks (it includes the wait for the slower ranks to arrive).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROUNDS = 7


def _timed_comm():
    """COMM_WORLD as a communicator that adds the time of every collective fastnorm makes."""
    from mpi4py import MPI

    class Timed(MPI.Intracomm):
        seconds = 0.0

    def timed(name):
        method = getattr(MPI.Intracomm, name)

        def call(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                Timed.seconds += time.perf_counter() - start
        return call

    for name in ("Allgather", "Allreduce", "allgather", "allreduce", "bcast"):
        setattr(Timed, name, timed(name))
    return Timed(MPI.COMM_WORLD), Timed


def _measure(comm, clock, action, calls):
    """Median over ROUNDS of the slowest rank's seconds per call, and the mean share in MPI."""
    times, shares = [], []
    action()  # warm-up
    for _ in range(ROUNDS):
        comm.Barrier()
        clock.seconds = 0.0
        start = time.perf_counter()
        for _ in range(calls):
            action()
        elapsed = time.perf_counter() - start
        share = clock.seconds / elapsed
        times.append(comm.allreduce(elapsed, op=_max()) / calls)
        shares.append(comm.allreduce(share) / comm.Get_size())
    return statistics.median(times), statistics.median(shares)


def _max():
    from mpi4py import MPI
    return MPI.MAX


def _sync_bn_case(comm, shape, dtype, plain=False):
    from fastnorm.distributed import sync_batchnorm_backward, sync_batchnorm_forward

    rank, size = comm.Get_rank(), comm.Get_size()
    rows = np.array_split(np.arange(shape[0]), size)[rank]
    rng = np.random.default_rng(rank)
    local = (rows.size, *shape[1:])
    x = rng.standard_normal(local).astype(dtype)
    dout = rng.standard_normal(local).astype(dtype)
    gamma, beta = np.ones(shape[1], dtype), np.zeros(shape[1], dtype)
    bn_param = {"mode": "train"}

    def step():
        _, cache = sync_batchnorm_forward(x, gamma, beta, bn_param, comm)
        sync_batchnorm_backward(dout, cache)

    def plain_step():
        _, cache = forward(x, gamma, beta, bn_param)
        backward(dout, cache)

    if plain:  # batch norm of one process, fastnorm's own
        import fastnorm
        forward, backward = ((fastnorm.batchnorm_forward, fastnorm.batchnorm_backward) if len(shape) == 2
                             else (fastnorm.spatial_batchnorm_forward, fastnorm.spatial_batchnorm_backward))
        return plain_step
    return step


def _training_case(comm, batch_size, hidden, input_dim, dtype):
    from fastnorm import FullyConnectedNet, Solver

    rng = np.random.default_rng(0)
    n = 4 * batch_size
    data = {"X_train": rng.standard_normal((n, input_dim)), "y_train": rng.integers(0, 10, n),
            "X_val": rng.standard_normal((10, input_dim)), "y_val": rng.integers(0, 10, 10)}
    np.random.seed(0)
    model = FullyConnectedNet(hidden, input_dim=input_dim, num_classes=10, normalization="batchnorm",
                              weight_scale=5e-2, dtype=dtype, comm=comm)
    solver = Solver(model, data, update_rule="adam", batch_size=batch_size, verbose=False,
                    **({} if comm is None else {"comm": comm}))
    return solver._step


QUICK_CASES = [
    ("sync BN fwd+bwd (64, 16) float64", lambda c, plain: _sync_bn_case(c, (64, 16), np.float64, plain), 2),
    ("sync BN fwd+bwd (4, 3, 2, 2) float64", lambda c, plain: _sync_bn_case(c, (4, 3, 2, 2), np.float64, plain), 2),
    ("train step, batch 8, [6] on 5 float64", lambda c, plain: _training_case(None if plain else c, 8, [6], 5, np.float64), 2),
]
CASES = [
    # name, builder(comm, plain), calls per round
    ("sync BN fwd+bwd (4096, 512) float32", lambda c, plain: _sync_bn_case(c, (4096, 512), np.float32, plain), 5),
    ("sync BN fwd+bwd (64, 64, 16, 16) float32",
     lambda c, plain: _sync_bn_case(c, (64, 64, 16, 16), np.float32, plain), 5),
    ("train step, batch 256, [256, 256] on 3072 float32",
     lambda c, plain: _training_case(None if plain else c, 256, [256, 256], 3072, np.float32), 3),
]


def run_ranks(quick=False) -> list[dict]:
    """This job's row: one measurement per case (rank 0 returns it, others an empty list)."""
    import fastnorm
    from threadpoolctl import threadpool_limits

    fastnorm.set_num_threads(1)
    comm, clock = _timed_comm()
    rows = []
    with threadpool_limits(1):
        for name, build, calls in QUICK_CASES if quick else CASES:
            if comm.Get_size() == 1:  # the same work without comm: what synchronizing costs on one rank
                seconds, share = _measure(comm, clock, build(comm, True), calls)
                rows.append({"case": name, "ranks": 0, "ms": 1e3 * seconds, "mpi_share": share})
            seconds, share = _measure(comm, clock, build(comm, False), calls)
            rows.append({"case": name, "ranks": comm.Get_size(), "ms": 1e3 * seconds, "mpi_share": share})
    return rows if comm.Get_rank() == 0 else []


def _table(rows: list[dict]) -> str:
    ranks = sorted({r["ranks"] for r in rows})
    heads = [f"{p} rank{'s' * (p > 1)}: ms (MPI share)" if p else "no comm: ms" for p in ranks]
    lines = ["| case | " + " | ".join(heads) + " |",
             "|---|" + "---|" * len(ranks)]
    for case in dict.fromkeys(r["case"] for r in rows):
        cells = []
        for p in ranks:
            hit = [r for r in rows if r["case"] == case and r["ranks"] == p]
            if not hit:
                cells.append("-")
            else:
                cells.append(f"{hit[0]['ms']:.2f}" + (f" ({100 * hit[0]['mpi_share']:.0f}%)" if p else ""))
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastnorm.benchmarks.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", help="comma-separated rank counts: run each under mpiexec -n P")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (what --ranks reads)")
    parser.add_argument("--quick", action="store_true", help="tiny cases (checks that it runs)")
    args = parser.parse_args(argv)
    if args.ranks is None:
        rows = run_ranks(args.quick)
        if rows:
            print(json.dumps(rows) if args.json else _table(rows), flush=True)
        return 0
    rows = []
    for p in (int(v) for v in args.ranks.split(",")):
        command = ["mpiexec", "-n", str(p), sys.executable, "-m", __spec__.name, "--json"]
        done = subprocess.run(command + ["--quick"] * args.quick,
                              capture_output=True, text=True, env=os.environ, timeout=1800)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            return done.returncode
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
