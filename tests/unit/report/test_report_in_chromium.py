"""report.html as a browser renders it (Debian's chromium, headless): the chart's bars sit at their
times with the idle intervals as gaps, no element overflows its container, and host names and
timestamps are never wrapped. Screenshots are kept in tests/output/report-chromium/ (a CI artifact).

The page itself runs no script (its CSP forbids it): the measurement runs in a copy whose CSP also
allows one inline script, which writes getBoundingClientRect() figures into the DOM that
chromium --dump-dom prints.
"""
import datetime
import html
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from .render import ROOT, UTC, host_result, kernel_line, learned_result, run_report, tamper_line

OUTPUT = os.path.join(ROOT, "tests", "output", "report-chromium")
CHROMIUM_TIMEOUT = 90
NOW = datetime.datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)

MEASURE = r"""
<pre id="measure" hidden></pre>
<script>
(function () {
  const box = (el) => { const r = el.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width}; };
  const out = {innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth};
  const svg = document.querySelector('svg.chart');
  if (svg) {
    // The viewBox maps onto the content box, inside the border.
    const r = svg.getBoundingClientRect(), x0 = r.left + svg.clientLeft, k = svg.clientWidth / svg.viewBox.baseVal.width;
    out.plot = {left: x0 + Number(svg.dataset.left) * k, right: x0 + Number(svg.dataset.right) * k,
                from: Date.parse(svg.dataset.from), to: Date.parse(svg.dataset.to), svg: box(svg)};
    out.bars = Array.from(svg.querySelectorAll('rect.bar:not(.canary)')).map((b) => Object.assign(box(b),
      {start: Date.parse(b.dataset.start), end: Date.parse(b.dataset.end), attempts: Number(b.dataset.attempts)}));
    out.canary = svg.querySelectorAll('rect.bar.canary').length;
    out.texts = Array.from(svg.querySelectorAll('text')).map((t) => Object.assign(box(t), {text: t.textContent}));
    out.yticks = svg.querySelectorAll('text.ytick').length;
    out.xticks = Array.from(svg.querySelectorAll('text.xtick')).map((t) => Object.assign(box(t), {text: t.textContent}));
  }
  const body = document.body.getBoundingClientRect(), style = getComputedStyle(document.body);
  const inner = {left: body.left + parseFloat(style.paddingLeft), right: body.right - parseFloat(style.paddingRight)};
  out.outside = [];
  out.clipped = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (el.closest('svg') || el.id === 'measure' || el.tagName === 'SCRIPT') continue;
    const r = el.getBoundingClientRect();
    if (r.width && (r.left < inner.left - 0.5 || r.right > inner.right + 0.5)) {
      out.outside.push(el.tagName + ' ' + el.textContent.slice(0, 60) + ': ' + Math.round(r.right - inner.right) + ' px out');
    }
    if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).display !== 'inline') out.clipped.push(el.tagName + ' ' + el.textContent.slice(0, 60));
  }
  out.wrapped = [];
  for (const el of document.querySelectorAll('td.host, span.host, td.time, .addr')) {
    const range = document.createRange();
    range.selectNodeContents(el);
    const tops = new Set(Array.from(range.getClientRects()).map((q) => Math.round(q.top)));
    if (tops.size > 1) out.wrapped.push(el.textContent);
  }
  out.unwrappable = document.querySelectorAll('td.host, td.time').length;
  document.getElementById('measure').textContent = JSON.stringify(out);
})();
</script>
"""


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (scripts/bootstrap.sh installs Debian's chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def run_chromium(args, width):
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--hide-scrollbars", "--user-data-dir=" + profile, "--window-size=%d,1600" % width,
                               "--virtual-time-budget=3000"] + args,
                              capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def measure(report_html, width):
    """The page as chromium laid it out at this window width."""
    with open(report_html) as handle:
        page = handle.read()
    page = page.replace("style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'", 1)
    page = page.replace("</body>", MEASURE + "</body>", 1)
    copy = report_html.replace(".html", "-measure.html")
    with open(copy, "w") as handle:
        handle.write(page)
    dom = run_chromium(["--dump-dom", "file://" + copy], width)
    match = re.search(r'<pre id="measure" hidden="">(.*?)</pre>', dom, re.S)
    assert match and match.group(1), "the measuring script wrote nothing:\n" + dom[-2000:]
    return json.loads(html.unescape(match.group(1)))


def screenshot(report_html, name, width):
    os.makedirs(OUTPUT, exist_ok=True)
    path = os.path.join(OUTPUT, name)
    run_chromium(["--screenshot=" + path, "file://" + report_html], width)
    assert os.path.getsize(path) > 1000
    return path


def burst_results():
    """The issue's case: 70 s of bursty traffic in 5 s buckets, 7 of the 15 empty; plus the role's canary,
    a container's IPv6 denials, and a host with a long name."""
    start = datetime.datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)
    lines = []
    for slot in (0, 1, 3, 5, 7, 9, 12, 14):
        when = start + datetime.timedelta(seconds=5 * slot + 1)
        lines.append(kernel_line(when, "198.18.77.66", 443, 40000 + slot))
        lines.append(kernel_line(when + datetime.timedelta(seconds=1), "198.18.77.66", 443, 40000 + slot))  # the SYN again
    lines.append(kernel_line(start + datetime.timedelta(seconds=36), "198.18.77.66", 443, 30999, uid=0))  # canary
    lines.append(kernel_line(start + datetime.timedelta(seconds=46), "fd00:0a9e:0001:0000:0000:0000:0000:0066", 443, 50000,
                             src="fd00:d0e::2", inside="docker0"))
    since = NOW - datetime.timedelta(hours=24)
    tamper = [tamper_line(start + datetime.timedelta(seconds=20), ["ipv4/filter/output-jump", "ipv6/filter/output-jump"], 0.21, 0.43),
              tamper_line(start + datetime.timedelta(seconds=50), ["ipv4/mangle/hook-jump"], 4.8)]
    result = host_result(lines, 5, since, NOW, users={1000: "agent", 0: "root"},
                         counters={"ipv4": {"output": 37, "forward": 3}, "ipv6": {"output": 2, "forward": 0}}, tamper=tamper)
    # The case: a ring buffer that holds the last 12 minutes of the 24 hours asked, counters not read.
    other = host_result([kernel_line(start + datetime.timedelta(seconds=16), "198.18.77.67", 25, 41000)], 5, since, NOW,
                        oldest=NOW - datetime.timedelta(minutes=12))
    return {"agent-with-a-long-name-01.eu-west.example.internal": result, "agent-2": other}


def day_results():
    """Day buckets over a week: three busy days, the others idle."""
    start = datetime.datetime(2026, 11, 18, 13, 0, 0, tzinfo=UTC)
    lines = []
    for day, count in ((0, 3), (2, 12), (6, 5)):
        for n in range(count):
            lines.append(kernel_line(start + datetime.timedelta(days=day, minutes=10 * n), "198.18.77.66", 443, 42000 + n))
    return {"agent-1": host_result(lines, 86400, NOW - datetime.timedelta(days=7), NOW, users={1000: "agent"})}


# A week of learning on agent-1: a long name, a system user's entry, a nameless address on many ports
# (its port list must wrap inside its cell) and a withheld SMTP destination.
LEARN_SAVE = "\n".join(
    ["create ag4-_learn hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 604800 counters",
     "add ag4-_learn 198.18.77.10,tcp:443 timeout 600000 packets 40 bytes 2400",
     "add ag4-_learn 198.18.77.25,tcp:25 timeout 601000 packets 2 bytes 120"]
    + ["add ag4-_learn 198.18.77.66,tcp:%d timeout 602000 packets 1 bytes 60" % port for port in range(8000, 8040)]
    + ["create ag4-_learn-u100 hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 604800 counters",
       "add ag4-_learn-u100 198.18.77.12,udp:123 timeout 604000 packets 900 bytes 68400"])


def learn_vars():
    learned = learned_result(LEARN_SAVE, [("inference.eu-west-1.api.very-long-provider-name.example.test", "198.18.77.10"),
                                          ("time.example.test", "198.18.77.12")], {100: "_chrony"}, NOW)
    return {"agent-1": {"egress_learn": True, "egress_report_learned": learned, "egress_dns_servers": ["198.18.77.53"]}}


CASES = {"burst-5s": (burst_results, "24h", dict), "week-1d": (day_results, "7d", dict),
         "week-1d-learn": (day_results, "7d", learn_vars)}


@pytest.fixture(scope="module", params=sorted(CASES))
def rendered(request, tmp_path_factory):
    make, since, variables = CASES[request.param]
    chromium()
    agents = dict((h, variables().get(h, {})) for h in make())
    proc, out = run_report(tmp_path_factory.mktemp(request.param), agents, make(), since=since)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    path = os.path.join(out, "report.html")
    screenshot(path, "%s.png" % request.param, 1280)
    return request.param, path


@pytest.mark.parametrize("width", [1280, 1024])
def test_bars_sit_at_their_times_with_gaps(rendered, width):
    case, path = rendered
    m = measure(path, width)
    plot, bars = m["plot"], m["bars"]
    assert bars, m
    scale = (plot["right"] - plot["left"]) / float(plot["to"] - plot["from"])
    for rect in bars:
        assert rect["left"] == pytest.approx(plot["left"] + (rect["start"] - plot["from"]) * scale, abs=1.5), rect
        assert rect["right"] <= plot["left"] + (rect["end"] - plot["from"]) * scale + 1.5, rect
        assert plot["svg"]["left"] <= rect["left"] and rect["right"] <= plot["svg"]["right"]
    for rect, following in zip(bars, bars[1:]):
        assert rect["right"] <= following["left"], "bars overlap: %s %s" % (rect, following)
        idle = following["start"] - rect["end"]
        if idle > 0:  # an idle interval is a visible gap as wide as its time
            assert following["left"] - rect["right"] >= idle * scale - 1.5, (rect, following)
    if case == "burst-5s":
        assert len(bars) == 8 and m["canary"] == 1  # 8 slots (agent-2's attempt shares the one at 10:00:15)
        assert (plot["to"] - plot["from"]) == 75000
        assert sum(b["attempts"] for b in bars) == 10
    else:
        assert len(bars) == 3
    assert 3 <= m["yticks"] <= 5
    labels = [t["text"] for t in m["xticks"]]
    assert len(labels) >= 2 and len(set(labels)) == len(labels)
    for text in m["texts"]:  # every label inside the chart
        assert plot["svg"]["left"] - 0.5 <= text["left"] and text["right"] <= plot["svg"]["right"] + 0.5, text
    for tick, following in zip(m["xticks"], m["xticks"][1:]):
        assert tick["right"] < following["left"], "x labels overlap: %s %s" % (tick, following)


@pytest.mark.parametrize("width", [1280, 1024])
def test_nothing_overflows_and_names_and_times_stay_on_one_line(rendered, width):
    case, path = rendered
    m = measure(path, width)
    assert m["scrollWidth"] <= m["innerWidth"], "the page scrolls sideways at %d px" % width
    assert m["outside"] == [], m["outside"][:5]
    assert m["clipped"] == [], m["clipped"][:5]
    assert m["unwrappable"] > 0 and m["wrapped"] == [], m["wrapped"][:5]
