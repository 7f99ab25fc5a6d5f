"""The page's plotly.js: plotly.js's own cartesian bundle with only the trace types the app draws registered.

plotly.js spends about half of its start-up on the page registering trace types: each one builds its attribute
tree as the bundle runs. The cartesian bundle (npm `plotly.js-cartesian-dist-min`, MIT: static/plotly.js-LICENSE)
registers twelve; the app draws three (`TRACES`). `trimmed` rewrites the bundle's one top-level `register([...])`
call to keep those and every non-trace module, and leaves all else as plotly.js built it: the dropped traces' code
is still in the file, never run. plotly.js's own tool makes such partial bundles from its sources; this makes one
from the published file, offline. The result is shipped as static/plotly-xattn.min.js, made by

    python -m app.bundle path/to/plotly.js-cartesian-dist-min/plotly-cartesian.min.js
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

TRACES = ("heatmap", "scatter", "bar")        # the trace types the app's figures use (tests check both ways)
BUNDLE = Path(__file__).resolve().parent / "static" / "plotly-xattn.min.js"
# The index: the module the bundle returns, which registers modules on plotly.js's object and exports it
# (`var I=z((e,r)=>{var P=core();P.register([a(),b()]);r.exports=P});return I();`)
_INDEX = re.compile(r"var ([\w$]+)=[\w$]+\(\([\w$]+,([\w$]+)\)=>\{var ([\w$]+)=[\w$]+\(\);"
                    r"\3\.register\(\[((?:[\w$]+\(\),?)+)\]\);\2\.exports=\3\}\);return \1\(\);")
_KIND = re.compile(r'moduleType:"(\w+)",name:"(\w+)"')


def module_kind(source: str, name: str) -> tuple[str, str]:
    """The (moduleType, name) a registered module of the bundle declares, found through the wrapper esbuild
    writes around it (`var A=z((e,r)=>{"use strict";r.exports=B()})`)."""
    wrapper = re.search(r"var " + re.escape(name) + r"=([\w$]+)\(\([\w$]+,([\w$]+)\)=>\{\"use strict\";\2\.exports="
                        r"([\w$]+)\(\)\}\)", source)
    if wrapper is None:
        raise ValueError(f"no module {name} in this bundle")
    helper, inner = wrapper.group(1), wrapper.group(3)
    start = source.index(f"var {inner}={helper}(")
    end = re.compile(r"var [\w$]+=" + re.escape(helper) + r"\(").search(source, start + 1)
    kind = _KIND.search(source, start, end.start() if end else len(source))
    if kind is None:
        raise ValueError(f"module {name} of this bundle declares no moduleType")
    return kind.group(1), kind.group(2)


def trimmed(source: str, traces: tuple[str, ...] = TRACES) -> str:
    """`source`, a plotly.js bundle, registering of its trace types only `traces` (core's own scatter stays); a
    header line says so. Raises ValueError where the bundle is not laid out as expected."""
    index = list(_INDEX.finditer(source))
    if len(index) != 1:
        raise ValueError("no index module registering plotly.js's modules in this bundle")
    call = index[0]
    names = re.findall(r"([\w$]+)\(\)", call.group(4))
    kept = [name for name in names if (kind := module_kind(source, name))[0] != "trace" or kind[1] in traces]
    start, end = call.span(4)
    version_line = re.search(r"\* plotly\.js[^\n]*\n", source)
    if version_line is None:
        raise ValueError("no plotly.js version line in this bundle's header")
    note = f"* xattn: trace types registered: {', '.join(sorted(traces))} (app/bundle.py)\n"
    body = source[version_line.end():start] + ",".join(f"{name}()" for name in kept) + source[end:]
    return source[:version_line.end()] + note + re.sub(r"^\* xattn: [^\n]*\n", "", body)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit(__doc__)
    BUNDLE.write_text(trimmed(Path(argv[0]).read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {BUNDLE}")


if __name__ == "__main__":
    main(sys.argv[1:])
