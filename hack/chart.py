#!/usr/bin/env python3
"""Renders and lints charts/cluster-relay without a helm binary, through
PyPI's helm-python-sdk (Helm v4 as a native library; SUBSTRATE.md), for the
tests, the demo and people.

  chart.py render [-f VALUES]... [--set-json JSON] [--name N] [--namespace NS]
      prints a JSON list, one entry per rendered object:
      {"template": PATH, "location": hosting|managed|"", "hook": "" or the
      helm.sh/hook value, "object": {...}}
  chart.py lint [-f VALUES]...
      prints the lint report as JSON; exits 1 when it has warnings or errors
  chart.py yaml LOCATION [render options]
      prints the objects for LOCATION (hosting or managed) as a YAML stream
      for `kubectl apply -f -`, without hooks

Values files are merged in order, then --set-json (a JSON object) on top.
"""

import argparse
import json
import os
import sys

import helm_python as helm

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "charts", "cluster-relay")
LOCATION = "addon.open-cluster-management.io/hosted-manifest-location"


def merge(base, extra):
    """Helm's coalescing of user values: maps merge, everything else replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def user_values(args):
    values = {}
    for path in args.values:
        with open(path, encoding="utf-8") as f:
            values = merge(values, helm.values_from_yaml(f.read()))
    if args.set_json:
        values = merge(values, json.loads(args.set_json))
    return values


def documents(text):
    """The YAML documents of one rendered template, as objects."""
    # helm's own YAML parser, through values_from_yaml, keeps the types Helm
    # would send to the apiserver.
    for doc in text.split("\n---"):
        body = "\n".join(line for line in doc.splitlines() if not line.startswith("---"))
        if not body.strip() or all(
            not line.strip() or line.lstrip().startswith("#") for line in body.splitlines()
        ):
            continue
        yield helm.values_from_yaml(body)


def render(args):
    chart = helm.Chart.load(CHART)
    values = user_values(args)
    merged = chart.merge_values(values)
    chart.validate_schema(merged)
    rendered = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    out = []
    for template in sorted(rendered):
        if not template.endswith((".yaml", ".yml")):
            continue
        for obj in documents(rendered[template]):
            annotations = obj.get("metadata", {}).get("annotations") or {}
            out.append(
                {
                    "template": template,
                    "location": annotations.get(LOCATION, ""),
                    "hook": annotations.get("helm.sh/hook", ""),
                    "object": obj,
                }
            )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["render", "lint", "yaml"])
    parser.add_argument("location", nargs="?", choices=["hosting", "managed"])
    parser.add_argument("-f", "--values", action="append", default=[])
    parser.add_argument("--set-json", default="")
    parser.add_argument("--name", default="cluster-relay")
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args()
    try:
        if args.command == "lint":
            report = helm.lint(CHART, user_values(args), strict=True, namespace=args.namespace)
            print(json.dumps(report, indent=2))
            bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
            return 1 if bad or report.get("errors") else 0
        objects = render(args)
        if args.command == "render":
            print(json.dumps(objects, indent=2))
            return 0
        if not args.location:
            parser.error("yaml needs a LOCATION (hosting or managed)")
        for entry in objects:
            if entry["location"] == args.location and not entry["hook"]:
                # JSON is YAML; kubectl reads one document per ---.
                print("---")
                print(json.dumps(entry["object"]))
        return 0
    except helm.HelmError as err:
        print(f"chart.py: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
