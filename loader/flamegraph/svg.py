"""Our own SVG flame graph: no d3, no web fetch, one file a browser opens from disk.

Layout: an icicle (the root, ``all``, on top; each row below is one frame deeper), each frame a
``<g class="f">`` holding its ``<title>`` (full name, value, share: the tooltip), a ``<rect>``
whose width is proportional to its value, and a ``<text>`` label cut with "…" when the frame is
too narrow for its name. Colours are a hash of the name, so one function has one colour in every
graph: warm for user code, blue for kernel frames (names ending ``_[k]``, flamegraph.pl's
marker, or given in ``kernel``), grey for ``all``.

The inline script (about 60 lines) adds what the classic flamegraph.pl SVG has: a search box
(a regular expression; matching frames turn magenta and the share of the total they cover is
shown), click to zoom (the frame becomes full width, its ancestors stay, greyed), and a reset.
Frames narrower than ``MIN_PX`` are left out (their value still counts in their parent's width),
which keeps a 10,000-frame profile around 2 MB.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterable
from pathlib import Path

from loader.flamegraph.folded import Stack, merge

WIDTH = 1200        # px
PAD = 10            # px left and right
ROW = 17            # px per frame row
FONT = 12           # px, monospace: ~0.6 em per character
CHAR = FONT * 0.6
TOP = 62            # px above the first row: title and toolbar
MIN_PX = 0.1        # frames narrower than this are not drawn
KERNEL_MARK = "_[k]"


class _Node:
    __slots__ = ("name", "value", "children")

    def __init__(self, name: str) -> None:
        self.name, self.value, self.children = name, 0, {}


def _tree(stacks: Iterable[Stack]) -> _Node:
    root = _Node("all")
    for frames, value in merge(stacks):
        root.value += value
        node = root
        for frame in frames:
            node = node.children.setdefault(frame, _Node(frame))
            node.value += value
    return root


def label(name: str, width: float) -> str:
    """The part of ``name`` that fits ``width`` px (the script cuts the same way on zoom)."""
    fit = int((width - 6) / CHAR)
    if fit < 3:
        return ""
    return name if len(name) <= fit else name[:fit - 1] + "…"


def colour(name: str, kernel: bool) -> str:
    """A stable colour for ``name``: warm for user frames, blue for kernel ones."""
    h = zlib.crc32(name.encode())
    a, b, c = (h & 0xFF) / 255, ((h >> 8) & 0xFF) / 255, ((h >> 16) & 0xFF) / 255
    if kernel:
        return f"rgb({int(70 + 60 * a)},{int(140 + 60 * b)},{int(200 + 55 * c)})"
    return f"rgb({int(205 + 50 * a)},{int(60 + 170 * b)},{int(40 * c)})"


def write_svg(path: Path, stacks: Iterable[Stack], *, title: str, unit: str = "samples",
              kernel: Collection[str] = ()) -> None:
    """Render ``stacks`` as a searchable, zoomable SVG flame graph titled ``title``; values are
    in ``unit`` (samples, ns, bytes …). ``kernel``: frame names to colour as kernel code."""
    Path(path).write_text(render_svg(stacks, title=title, unit=unit, kernel=kernel), encoding="utf-8")


def render_svg(stacks: Iterable[Stack], *, title: str, unit: str = "samples",
               kernel: Collection[str] = ()) -> str:
    """The SVG document ``write_svg`` writes."""
    # imported here: xml.sax.saxutils pulls in urllib.request and http.client (~15 ms), which
    # every `bpfdepot` command line would pay, as the run command's flags come from this package
    from xml.sax.saxutils import escape

    root = _tree(stacks)
    kernel = frozenset(kernel)
    full = WIDTH - 2 * PAD
    rows: list[str] = []
    depth_max = 0
    # depth-first, children by name: the same profile always gives the same bytes
    todo: list[tuple[_Node, int, float]] = [(root, 0, PAD)]
    while todo:
        node, depth, x = todo.pop()
        w = node.value / root.value * full if root.value else full
        depth_max = max(depth_max, depth)
        y = TOP + depth * ROW
        is_kernel = node.name in kernel or node.name.endswith(KERNEL_MARK)
        fill = "rgb(200,200,200)" if depth == 0 else colour(node.name, is_kernel)
        share = node.value / root.value * 100 if root.value else 0.0
        name = escape(node.name)
        rows.append(f'<g class="f"><title>{name} ({node.value:,} {escape(unit)}, {share:.2f}%)'
                    f'</title><rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{ROW - 1}" '
                    f'fill="{fill}" rx="2"/><text x="{x + 3:.2f}" y="{y + ROW - 5}">'
                    f'{escape(label(node.name, w))}</text></g>')
        child_x = x
        placed = []
        for child in sorted(node.children.values(), key=lambda n: n.name):
            cw = child.value / root.value * full
            if cw >= MIN_PX:
                placed.append((child, depth + 1, child_x))
            child_x += cw
        todo.extend(reversed(placed))
    height = TOP + (depth_max + 1) * ROW + 34
    empty = "" if root.value else (f'<text x="{WIDTH / 2}" y="{TOP + 40}" text-anchor="middle">'
                                   "no samples</text>")
    return (f'<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" '
            f'height="{height}" viewBox="0 0 {WIDTH} {height}" onload="init()">\n'
            f"<style>{_STYLE}</style>\n<script><![CDATA[{_SCRIPT}]]></script>\n"
            f'<rect width="100%" height="100%" fill="rgb(250,250,245)"/>\n'
            f'<text id="title" x="{WIDTH / 2}" y="22" text-anchor="middle">{escape(title)}</text>\n'
            f'<foreignObject x="{PAD}" y="32" width="300" height="24"><input '
            f'xmlns="http://www.w3.org/1999/xhtml" id="search" type="text" '
            f'placeholder="search (regular expression)" '
            f'style="width:280px;font:12px monospace"/></foreignObject>\n'
            f'<text id="reset" class="btn" x="330" y="48" onclick="unzoom()" '
            f'visibility="hidden">Reset zoom</text>\n'
            f'<text id="matched" x="{WIDTH - PAD}" y="48" text-anchor="end"></text>\n'
            f'<g id="frames" data-total="{root.value}" data-unit="{escape(unit)}">\n'
            + "\n".join(rows) + "\n</g>\n" + empty +
            f'<text id="details" x="{PAD}" y="{height - 12}"> </text>\n</svg>\n')


_STYLE = ("text{font-family:monospace;font-size:12px;fill:#000}"
          "#title{font-size:17px}.f{cursor:pointer}.f:hover rect{stroke:#000;stroke-width:0.5}"
          ".btn{cursor:pointer;fill:#1a4fb4;text-decoration:underline}")

# The frames keep their first geometry in arrays (X, W, D): zoom and search work from those,
# so zooming twice or searching while zoomed never compounds rounding.
_SCRIPT = r"""
var F=[],X=[],W=[],D=[],FILL=[],NAME=[],PAD=%(pad)s,FULL=%(full)s,CH=%(ch)s,TOP=%(top)s,ROW=%(row)s;
function init(){
 var gs=document.querySelectorAll('#frames > g.f');
 for(var i=0;i<gs.length;i++){var r=gs[i].querySelector('rect');F.push(gs[i]);
  X.push(+r.getAttribute('x'));W.push(+r.getAttribute('width'));
  D.push(Math.round((+r.getAttribute('y')-TOP)/ROW));FILL.push(r.getAttribute('fill'));
  var t=gs[i].querySelector('title').textContent;NAME.push(t.slice(0,t.lastIndexOf(' (')));
  gs[i].onclick=zoomer(i);gs[i].onmouseover=shower(i);}
 var s=document.getElementById('search');if(s)s.addEventListener('input',function(){search(s.value);});
}
function zoomer(i){return function(){if(D[i]==0)unzoom();else zoom(i);};}
function shower(i){return function(){document.getElementById('details').textContent=
 F[i].querySelector('title').textContent;};}
function cut(n,w){var fit=Math.floor((w-6)/CH);if(fit<3)return '';
 return n.length<=fit?n:n.slice(0,fit-1)+'\u2026';}
function place(i,x,w,show,faded){var g=F[i],r=g.querySelector('rect'),t=g.querySelector('text');
 g.style.display=show?'':'none';if(!show)return;r.setAttribute('x',x.toFixed(2));
 r.setAttribute('width',w.toFixed(2));r.setAttribute('fill-opacity',faded?'0.5':'1');
 t.setAttribute('x',(x+3).toFixed(2));t.textContent=cut(NAME[i],w);}
function zoom(z){var x0=X[z],w0=W[z],e=0.001;
 for(var i=0;i<F.length;i++){var inside=X[i]>=x0-e&&X[i]+W[i]<=x0+w0+e;
  if(D[i]<D[z])place(i,PAD,FULL,X[i]<=x0+e&&X[i]+W[i]>=x0+w0-e,true);
  else place(i,PAD+(X[i]-x0)*FULL/w0,W[i]*FULL/w0,inside,false);}
 document.getElementById('reset').setAttribute('visibility','visible');}
function unzoom(){for(var i=0;i<F.length;i++)place(i,X[i],W[i],true,false);
 document.getElementById('reset').setAttribute('visibility','hidden');}
function search(text){var re=null,m=document.getElementById('matched');
 try{re=text?new RegExp(text):null;}catch(err){m.textContent='bad regular expression';return 0;}
 var spans=[];
 for(var i=0;i<F.length;i++){var hit=re!==null&&D[i]>0&&re.test(NAME[i]);
  F[i].querySelector('rect').setAttribute('fill',hit?'rgb(230,0,230)':FILL[i]);
  if(hit)spans.push([X[i],X[i]+W[i]]);}
 spans.sort(function(a,b){return a[0]-b[0];});var cover=0,end=-1;
 for(var j=0;j<spans.length;j++){var a=Math.max(spans[j][0],end);
  if(spans[j][1]>a){cover+=spans[j][1]-a;end=spans[j][1];}}
 var pct=re===null?0:cover/FULL*100;m.textContent=re===null?'':'Matched: '+pct.toFixed(1)+'%%';
 return pct;}
""" % {"pad": PAD, "full": WIDTH - 2 * PAD, "ch": CHAR, "top": TOP, "row": ROW}
