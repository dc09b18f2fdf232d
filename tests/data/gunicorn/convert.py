#!/usr/bin/env python3
"""Converts gunicorn's request fixtures (tests/requests/{valid,invalid} of its sdist, MIT) into cases.json,
which tests/gunicorn_corpus.rs replays through shoal.

Usage: python3 convert.py path/to/gunicorn-X.Y.Z   (the unpacked sdist; gunicorn itself must import from it)

Each .http file is decoded as gunicorn's tests/treq.py does (newlines dropped, \\r\\n \\0 \\n \\t escapes);
each .py file is executed with gunicorn's `uri` helper: valid ones give the request (or list of requests)
gunicorn parses, invalid ones the exception class it raises. Cases whose .py sets gunicorn options
(`cfg = Config()`) record them, since they change what is valid.
"""
import base64
import glob
import importlib.util
import json
import os
import sys
import types

root = sys.argv[1]
sys.path.insert(0, root)
from gunicorn.config import Config  # noqa: E402

spec = importlib.util.spec_from_file_location("treq", os.path.join(root, "tests", "treq.py"))
treq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(treq)


def raw(path):
    data = open(path, "rb").read()
    data = data.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n")
    return data.replace(b"\\0", b"\000").replace(b"\\n", b"\n").replace(b"\\t", b"\t")


def settings(cfg):
    if cfg is None:
        return {}
    default = Config()
    return {k: str(v.get()) for k, v in cfg.settings.items() if v.get() != default.settings[k].get()}


cases = []
for kind in ("valid", "invalid"):
    for http in sorted(glob.glob(os.path.join(root, "tests", "requests", kind, "*.http"))):
        env = treq.load_py(http[:-5] + ".py")
        case = {"name": "%s/%s" % (kind, os.path.basename(http)), "bytes": base64.b64encode(raw(http)).decode(),
                "settings": settings(env.get("cfg"))}
        expected = env["request"]
        if kind == "invalid":
            case["error"] = expected.__name__
        else:
            requests = expected if isinstance(expected, list) else [expected]
            case["requests"] = [{
                "method": r["method"], "uri": r["uri"]["raw"], "version": list(r["version"]),
                "headers": [[k, v] for k, v in r["headers"]],
                "body": base64.b64encode(r["body"] if isinstance(r["body"], bytes) else r["body"].encode("latin1")).decode(),
            } for r in requests]
        cases.append(case)
json.dump(cases, open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases.json"), "w"), indent=1)
print("%d cases" % len(cases))
