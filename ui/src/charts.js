// ECharts with only the parts the pages use (tree-shaken through echarts/core), drawn as SVG:
// the text of a chart (edge labels, axis names) is then in the page, where a reader's search
// and the browser tests find it.
import * as echarts from "echarts/core";
import { GraphChart, HeatmapChart, LineChart, BarChart } from "echarts/charts";
import { GridComponent, LegendComponent, TooltipComponent, VisualMapComponent } from "echarts/components";
import { SVGRenderer } from "echarts/renderers";

echarts.use([GraphChart, HeatmapChart, LineChart, BarChart, GridComponent, TooltipComponent,
  LegendComponent, VisualMapComponent, SVGRenderer]);

const charts = new Set();

/** A chart in `el` (SVG); disposed with `dispose(chart)` or all at once by `disposeAll()`. */
export function chart(el) {
  const made = echarts.init(el, null, { renderer: "svg" });
  charts.add(made);
  return made;
}

/** Dispose one chart (a part of a page drawn again). */
export function dispose(made) {
  if (made && charts.delete(made)) made.dispose();
}

/** Dispose every chart made since the last call (a page's cleanup). */
export function disposeAll() {
  for (const made of charts) made.dispose();
  charts.clear();
}

window.addEventListener("resize", () => { for (const made of charts) made.resize(); });

/** A time axis's min and max: the page's whole range (from API.md's `range`), so an axis shows
 * the range asked for — not just the steps that hold data — and the charts of a page line up. */
export function span(range) {
  return range ? { min: range.from_ns / 1e6, max: range.to_ns / 1e6 } : {};
}
