#!/usr/bin/env python3
"""Compare an Autobahn|Testsuite run with the expected results.

Usage:
    compare.py REPORT --expected FILE [--agent NAME] [--update]

REPORT is Autobahn's index.json, or the report directory holding it
(e.g. <work>/reports/servers).  The run is reduced, for one agent, to

    {"1.1.1": {"behavior": "OK", "behaviorClose": "OK"}, ...}

sorted by case id numerically, then:

  * compared case by case with FILE (missing, extra and changed cases are
    all differences);
  * checked on its own: every case's behavior and behaviorClose must be OK or
    INFORMATIONAL.  NON-STRICT, FAILED, UNIMPLEMENTED, WRONG CODE, ... fail.

With --update the reduced run is written to FILE instead of being compared
(the OK/INFORMATIONAL check still applies, so recording a failing run exits
non-zero, though the file is written).

Exit status: 0 all good, 1 differences or failing cases, 2 usage error or
missing/unreadable input.  Standard library only.
"""

import argparse
import collections
import json
import os
import sys

PASSING = ("OK", "INFORMATIONAL")


def case_key(case_id):
    """Sort key for case ids like "9.1.10": numeric per component."""
    return tuple(int(part) if part.isdigit() else part
                 for part in case_id.split("."))


def load_run(report, agent):
    """Return the reduced, sorted results of `agent` from index.json."""
    path = report
    if os.path.isdir(path):
        path = os.path.join(path, "index.json")
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit("compare.py: cannot read Autobahn report %s: %s" % (path, e))
    if agent not in index:
        sys.exit("compare.py: agent %r not in %s (agents: %s)"
                 % (agent, path, ", ".join(sorted(index)) or "none"))
    cases = index[agent]
    return collections.OrderedDict(
        (case_id, {"behavior": cases[case_id].get("behavior"),
                   "behaviorClose": cases[case_id].get("behaviorClose")})
        for case_id in sorted(cases, key=case_key))


def fmt(result):
    if result is None:
        return "(absent)"
    return "%s/%s" % (result.get("behavior"), result.get("behaviorClose"))


def summary(run):
    """One line each for behavior and behaviorClose: counts per value."""
    for field in ("behavior", "behaviorClose"):
        counts = collections.Counter(r[field] for r in run.values())
        print("  %-15s %s" % (field + ":", ", ".join(
            "%s %d" % (value, n) for value, n in sorted(counts.items()))))


def main():
    parser = argparse.ArgumentParser(
        description="Compare Autobahn|Testsuite results with expected ones.")
    parser.add_argument("report", help="index.json or the directory holding it")
    parser.add_argument("--expected", required=True,
                        help="expected results JSON (written with --update)")
    parser.add_argument("--agent", default="switchboard",
                        help="agent name in the report (default: switchboard)")
    parser.add_argument("--update", action="store_true",
                        help="write the run to --expected instead of comparing")
    args = parser.parse_args()

    run = load_run(args.report, args.agent)
    print("Autobahn results for %s: %d cases" % (args.agent, len(run)))
    summary(run)

    ok = True

    # Independent of any expectations: everything must pass.
    failing = [(c, r) for c, r in run.items()
               if r["behavior"] not in PASSING or r["behaviorClose"] not in PASSING]
    if failing:
        ok = False
        print("%d case(s) not OK/INFORMATIONAL (behavior/behaviorClose):"
              % len(failing))
        for case_id, result in failing:
            print("  %-10s %s" % (case_id, fmt(result)))

    if args.update:
        with open(args.expected, "w", encoding="utf-8") as f:
            json.dump(run, f, indent=2)
            f.write("\n")
        print("wrote %d cases to %s" % (len(run), args.expected))
    else:
        try:
            with open(args.expected, encoding="utf-8") as f:
                expected = json.load(f)
        except FileNotFoundError:
            print("compare.py: no expected results at %s "
                  "(record them with --update)" % args.expected)
            return 2
        except (OSError, ValueError) as e:
            print("compare.py: cannot read %s: %s" % (args.expected, e))
            return 2
        diffs = []
        for case_id in sorted(set(run) | set(expected), key=case_key):
            got, want = run.get(case_id), expected.get(case_id)
            if got != want:
                diffs.append((case_id, want, got))
        if diffs:
            ok = False
            print("%d case(s) differ from %s (expected -> got):"
                  % (len(diffs), args.expected))
            for case_id, want, got in diffs:
                print("  %-10s %s -> %s" % (case_id, fmt(want), fmt(got)))
        else:
            print("all %d cases match %s" % (len(run), args.expected))

    print("RESULT: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
