"""Start-up of the commands that scan nothing: wall time and peak RSS of whole processes, against
``python -c pass`` measured in the same run (median of ``--runs`` alternating runs).

    python bench/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile

from timing import process_cost

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "lineage --help": [sys.executable, "-m", "lineage_scanner.cli.main", "--help"],
    'lineage sql "select 1"': [sys.executable, "-m", "lineage_scanner.cli.main", "sql", "select 1"],
    # the floor under any SQL command: importing DuckDB and opening its first connection
    "duckdb floor": [sys.executable, "-c", "import duckdb; duckdb.connect().execute('select 1').fetchall()"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    assert resource.RUSAGE_CHILDREN  # peak RSS per child comes from wait4
    with tempfile.TemporaryDirectory() as cwd:  # a fresh ./lineage-db, as a first-time user has
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
        for _ in range(args.runs):
            for name, argv in COMMANDS.items():
                results[name].append(process_cost(argv, cwd))
    base_wall = statistics.median(w for w, _ in results["python -c pass"])
    print(f"| command | wall s (median of {args.runs}) | over `python -c pass` | peak RSS MB |")
    print("| --- | ---: | ---: | ---: |")
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        rss = statistics.median(r for _, r in runs)
        print(f"| `{name}` | {wall:.3f} | {wall - base_wall:+.3f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
