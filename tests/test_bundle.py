"""app/bundle.py: the page's plotly.js registers only the trace types the app draws."""
from __future__ import annotations

import re

import pytest

from app import bundle

# A bundle laid out as esbuild writes plotly.js's: each module a `var X=z(...)`, a wrapper re-exporting each
# registered one, and the index's register([...]) call last.
TOY = """/**
* plotly.js (cartesian - minified) v9.9.9
* Copyright 2012-2026, Plotly, Inc.
*/
var Bar=z((e,r)=>{"use strict";var x=y();r.exports={calc:1,moduleType:"trace",name:"bar",meta:{}}});
var Pie=z((e,r)=>{"use strict";r.exports={moduleType:"trace",name:"pie"}});
var Cal=z((e,r)=>{"use strict";var u=w(),v={a:1};r.exports={moduleType:"component",name:"calendars"}});
var b$=z((e,r)=>{"use strict";r.exports=Bar()});var p=z((e,r)=>{"use strict";r.exports=Pie()});
var c=z((e,r)=>{"use strict";r.exports=Cal()});
var core=z((e,r)=>{var P=plotly();P.register([p()]);r.exports=P});
var I=z((e,r)=>{var P=core();P.register([b$(),p(),c()]);r.exports=P});return I();})();
"""


def registered(source: str) -> str:
    return re.findall(r"register\(\[[^\]]*\]\)", source)[-1]


def test_trimmed_drops_the_trace_types_not_drawn_and_keeps_every_other_module() -> None:
    out = bundle.trimmed(TOY, traces=("bar", "heatmap"))
    assert registered(out) == "register([b$(),c()])"                 # pie gone; calendars, a component, kept
    assert out.count("register([p()])") == 1                          # only the index's call changes
    assert out.replace(registered(out), "") == TOY.replace(registered(TOY), "").replace(
        "v9.9.9\n", "v9.9.9\n* xattn: trace types registered: bar, heatmap (app/bundle.py)\n")
    assert bundle.trimmed(out, traces=("bar", "heatmap")) == out       # made again from itself: the same file
    again = bundle.trimmed(out, traces=("pie",))            # pie's module is no longer in the call to bring back
    assert registered(again) == "register([c()])" and again.count("* xattn: ") == 1
    assert registered(bundle.trimmed(TOY, traces=("pie",))) == "register([p(),c()])"


@pytest.mark.parametrize("broken", [TOY.replace("P.register([b$(),p(),c()]);", ""),
                                    TOY.replace("return I();", "return core();"),
                                    TOY.replace('r.exports=Pie()', 'r.exports=Pie'),
                                    TOY.replace('moduleType:"trace",name:"pie"', 'name:"pie"'),
                                    TOY.replace("* plotly.js (cartesian - minified) v9.9.9\n", "")])
def test_trimmed_refuses_a_bundle_laid_out_otherwise(broken: str) -> None:
    with pytest.raises(ValueError):
        bundle.trimmed(broken)


def test_the_shipped_bundle_registers_only_the_apps_trace_types() -> None:
    """static/plotly-xattn.min.js is what `python -m app.bundle` makes: made again from itself it is unchanged, and
    its index registers, of trace types, only bundle.TRACES (scatter comes with plotly.js's core)."""
    source = bundle.BUNDLE.read_text(encoding="utf-8")
    assert bundle.trimmed(source) == source
    names = re.findall(r"([\w$]+)\(\)", registered(source))
    kinds = [bundle.module_kind(source, name) for name in names]
    assert {name for kind, name in kinds if kind == "trace"} == set(bundle.TRACES) - {"scatter"}
    assert len(set(re.findall(r'moduleType:"trace",name:"(\w+)"', source))) > len(bundle.TRACES)  # others: code only
