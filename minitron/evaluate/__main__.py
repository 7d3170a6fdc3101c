"""Print the folder of the tiny suite's generated lm-eval tasks (generating it first if needed), for `lm_eval --include_path`.

    python -m minitron.evaluate                      # tasks from the embedded corpus's held-out split
    python -m minitron.evaluate data=local data.path=/path/to/texts eval.generate.docs=16
"""

from __future__ import annotations

import sys

from minitron.config import compose
from minitron.errors import MinitronError
from minitron.evaluate.suite import load_suite
from minitron.evaluate.tiny_data import prepare_tiny_tasks


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = compose("eval", args)
        suite = load_suite(cfg.eval)
        if suite.generate is None:
            raise MinitronError(f"eval={suite.name}: this suite generates no task data; use eval=tiny")
        print(prepare_tiny_tasks(cfg.data, suite.generate, cfg.cache_dir).path)
    except MinitronError as e:
        print(f"python -m minitron.evaluate: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
