#!/usr/bin/env python3
"""DuckDB side of `gpusiem bench query`.

Runs a query suite with DuckDB over the Parquet files that gpusiem's store wrote, so both
engines read the very same files in the same run. `gpusiem bench query` writes the suite
(files, thread count, runs, and each query in DuckDB's dialect) as JSON and calls:

    python3 api/benches/duckdb_suite.py --suite SUITE.json [--venv DIR]

DuckDB comes from PyPI into a virtual environment of its own (default: target/duckdb-venv
in the workspace), created on the first run; the script then re-runs itself with that
environment's interpreter. Progress and pip's output go to stderr; stdout carries one JSON
object:

    {"duckdb_version": "1.x.y",
     "queries": {"<name>": {"cold_ms": f, "median_ms": f, "min_ms": f, "rows": n, "checksum": f}
                 | {"error": "..."}}}

`cold_ms` is the first run in a fresh connection (the operating system's page cache is as the
Rust side left it: both engines read files that were just written or read); `median_ms` and
`min_ms` are over the hot runs that follow. `checksum` sums every numeric cell of the result,
so the Rust side can tell that both engines computed the same thing, not only the same number
of rows.

Suite JSON: {"files": [absolute .parquet paths], "threads": 2, "iters": 5,
             "queries": [{"name": "...", "sql": "... FROM findings ..."}]}
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# A DuckDB that reads Parquet bloom filters and page statistics; any later release will do.
DUCKDB_REQUIREMENT = "duckdb>=1.2"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VENV = os.path.normpath(os.path.join(HERE, "..", "..", "target", "duckdb-venv"))


def log(msg):
    print(f"duckdb_suite: {msg}", file=sys.stderr, flush=True)


def venv_python(venv):
    return os.path.join(venv, "bin", "python")


def has_duckdb(python):
    return subprocess.run([python, "-c", "import duckdb"], capture_output=True).returncode == 0


def ensure_venv(venv):
    """Returns the venv's interpreter, creating the venv and installing DuckDB when missing."""
    python = venv_python(venv)
    if os.path.exists(python) and has_duckdb(python):
        return python
    if not os.path.exists(python):
        log(f"creating the virtual environment {venv}")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, stdout=sys.stderr)
    log(f"installing {DUCKDB_REQUIREMENT} from PyPI into {venv}")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", DUCKDB_REQUIREMENT],
        check=True,
        stdout=sys.stderr,
    )
    return python


def checksum(rows):
    total = 0.0
    for row in rows:
        for v in row:
            # bool is an int in Python; DuckDB returns HUGEINT sums as int, averages as float.
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                total += float(v)
    return total


def sql_string(s):
    return "'" + s.replace("'", "''") + "'"


def run_suite(suite):
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute(f"SET threads = {int(suite['threads'])}")
    # Date truncation and timestamp literals in UTC, like gpusiem (its ts column is UTC).
    con.execute("SET TimeZone = 'UTC'")
    files = suite["files"]
    if not files:
        raise SystemExit("duckdb_suite: the suite lists no Parquet files")
    file_list = "[" + ", ".join(sql_string(f) for f in files) + "]"
    # The files sit under dt=…/hour=… directories; those are not columns of the table.
    con.execute(f"CREATE VIEW findings AS SELECT * FROM read_parquet({file_list}, hive_partitioning = false)")
    iters = max(1, int(suite["iters"]))
    out = {}
    for q in suite["queries"]:
        name, sql = q["name"], q["sql"]
        try:
            start = time.perf_counter()
            rows = con.execute(sql).fetchall()
            cold = (time.perf_counter() - start) * 1000.0
            hot = []
            for _ in range(iters):
                start = time.perf_counter()
                con.execute(sql).fetchall()
                hot.append((time.perf_counter() - start) * 1000.0)
            out[name] = {
                "cold_ms": cold,
                "median_ms": statistics.median(hot),
                "min_ms": min(hot),
                "rows": len(rows),
                "checksum": checksum(rows),
            }
            log(f"{name}: {len(rows)} rows, cold {cold:.1f} ms, median {out[name]['median_ms']:.1f} ms")
        except duckdb.Error as e:
            out[name] = {"error": str(e)}
            log(f"{name}: {e}")
    return {"duckdb_version": duckdb.__version__, "queries": out}


def main():
    p = argparse.ArgumentParser(description="Run gpusiem's query suite with DuckDB.")
    p.add_argument("--suite", required=True, help="suite JSON written by `gpusiem bench query`")
    p.add_argument("--venv", default=os.environ.get("GPUSIEM_DUCKDB_VENV", DEFAULT_VENV),
                   help=f"virtual environment holding DuckDB (default {DEFAULT_VENV})")
    p.add_argument("--in-venv", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    if not args.in_venv:
        python = ensure_venv(os.path.abspath(args.venv))
        argv = [python, os.path.abspath(__file__), "--suite", args.suite, "--venv", args.venv, "--in-venv"]
        os.execv(python, argv)

    with open(args.suite, encoding="utf-8") as f:
        suite = json.load(f)
    result = run_suite(suite)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
