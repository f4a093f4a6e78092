"""The benchmarks whose output goes into the README, behind one entry point.

    python benchmark.py ablation [flags]   # which terms of Eq. (17) help (benchmarks/ablation.py)
    python benchmark.py regime [flags]     # where a teacher helps: regimes of data, the oracle ladder (regime.py)
    python benchmark.py speed [flags]      # student vs Depth Anything V2, time and memory (speed.py)
    python benchmark.py data [flags]       # loading speed per DataLoader worker (loading.py)
    python benchmark.py teacher [flags]    # the emulated teacher's zero-shot error (zeroshot.py)
    python benchmark.py traincost [flags]  # samples/s, memory and epoch time of training on nuScenes (traincost.py)

`python benchmark.py MODE -h` lists the flags of a mode.
"""
import sys

from cli import run_cli


def main(argv=None):
    """Dispatch `python benchmark.py MODE [flags]` to the mode's own file."""
    argv = sys.argv[1:] if argv is None else list(argv)
    modes = ("ablation", "regime", "speed", "data", "teacher", "traincost")
    if not argv or argv[0] not in modes:
        sys.exit(f"usage: python benchmark.py {{{','.join(modes)}}} [flags]; add -h after the mode for its flags")
    if argv[0] == "ablation":
        from benchmarks import ablation
        return ablation.ablation(argv[1:])
    if argv[0] == "regime":
        from benchmarks import regime
        return regime.regime(argv[1:])
    if argv[0] == "data":
        from benchmarks import loading
        return loading.data_benchmark(argv[1:])
    if argv[0] == "teacher":
        from benchmarks import zeroshot
        return zeroshot.teacher_zero_shot(argv[1:])
    if argv[0] == "traincost":
        from benchmarks import traincost
        return traincost.traincost(argv[1:])
    from benchmarks import speed
    return speed.speed(argv[1:])


if __name__ == "__main__":
    run_cli(main)
