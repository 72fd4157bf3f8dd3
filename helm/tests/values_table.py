#!/usr/bin/env python3
"""Prints the chart README's values table from values.yaml's `# --` comments (helm-docs style).

    helm/tests/values_table.py helm/weiling-relay/values.yaml            # print the table
    helm/tests/values_table.py helm/weiling-relay/values.yaml --write helm/weiling-relay/README.md
        # replace the table at the end of the README (everything from its header line on)
    ... --check helm/weiling-relay/README.md                             # exit 1 if the README differs
"""

import json
import re
import sys

import yaml

HEADER = "| key | default | description |"


def table(path: str) -> str:
    lines = open(path).read().splitlines()
    data = yaml.safe_load(open(path))
    indent_of = lambda s: len(s) - len(s.lstrip())  # noqa: E731
    stack, rows = [], []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9_]*):(\s.*)?$", line)
        if not m:
            continue
        ind = len(m.group(1))
        while stack and stack[-1][0] >= ind:
            stack.pop()
        covered = any(d for _, _, d in stack)
        keypath = [k for _, k, _ in stack] + [m.group(2)]
        block, j = [], i - 1
        while j >= 0 and lines[j].lstrip().startswith("#"):
            block.insert(0, (lines[j], j))
            j -= 1
        doc = None
        for k, (b, _) in enumerate(block):
            if b.lstrip().startswith("# --") and indent_of(b) == ind:
                doc = " ".join([b.strip()[4:].strip()] + [x.strip()[1:].strip() for x, _ in block[k + 1:]])
        stack.append((ind, m.group(2), doc is not None))
        if doc is None or covered:
            continue
        value = data
        for k in keypath:
            value = value[k]
        default = json.dumps(value, ensure_ascii=False)
        if len(default) > 60:
            default = "see values.yaml"
        esc = lambda t: t.replace("|", "\\|")  # noqa: E731
        rows.append(f"| `{'.'.join(keypath)}` | `{esc(default)}` | {esc(doc)} |")
    return "\n".join([HEADER, "|---|---|---|", *rows]) + "\n"


def main() -> int:
    t = table(sys.argv[1])
    if len(sys.argv) == 2:
        sys.stdout.write(t)
        return 0
    mode, readme = sys.argv[2], sys.argv[3]
    text = open(readme).read()
    head = text[: text.index(HEADER)] if HEADER in text else text
    if mode == "--write":
        open(readme, "w").write(head + t)
        return 0
    if head + t != text:
        print(f"{readme}: the values table is out of date; run helm/tests/values_table.py {sys.argv[1]} --write {readme}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
