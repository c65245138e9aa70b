"""The sandbox that judges generated code (DESIGN.md, "Sandbox"): callers use `Sandbox`, `Limits`, `Result`,
`Tier` and `detect_tier` from here. Its parts:

- harness.py: the caller's side (`Sandbox`: runs, limits, output, the verdict), with the threat model;
- result.py: what callers choose and get back (`Tier`, `Limits`, `Result`, `detect_tier`);
- watch.py: the caller's view of one run in flight (pipes, time and output limits, the verdict);
- verdict.py: rewrites the tests' asserts into probes before a run (`make_plan`);
- judge.py: rebuilds the values a run reported and evaluates each assert with the real built-ins;
- host.py: the tier this host allows and the client of the launcher process;
- launch.py: the launcher, run as a script (`python -I -S launch.py`, standard library only): a zygote that
  forks one isolated process tree per run;
- child.py: what the forked candidate process does before the program runs (isolation, probes, reports).
"""

from __future__ import annotations

from wmtp_studio.evaluate.sandbox.harness import Sandbox
from wmtp_studio.evaluate.sandbox.result import Limits, Result, Tier, detect_tier

__all__ = ["Limits", "Result", "Sandbox", "Tier", "detect_tier"]
