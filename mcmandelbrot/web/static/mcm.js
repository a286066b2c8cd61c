/* mcm.js: the interactive Mandelbrot page. It asks /image.png for the view
   in the form, as wide as the page shows it, zooms 5x around a click, and
   keeps the permalink, the 2048px link and the address bar on the view. */
"use strict";

var mcm = (function () {
  var DEFAULTS = {cr: -0.630, ci: 0.0, crpm: 1.40};
  var LIMIT = 3;         // every input is clamped to [-3, 3]
  var ZOOM = 5;          // a click zooms in (Zoom Out out) this much
  var PX_HD = 2048;      // width of the HD link's image
  var EPSILON = Math.pow(2, -52);
  var clientId = makeClientId();
  var view = null;       // the view last asked of the server

  function $(id) { return document.getElementById(id); }

  function clamp(x, lo, hi) { return Math.min(hi, Math.max(lo, x)); }

  function makeClientId() {
    var bytes = new Uint8Array(8);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return (b + 256).toString(16).slice(1);
    }).join("");
  }

  function buildQS(p) {
    return "?" + Object.keys(p).map(function (k) {
      return encodeURIComponent(k) + "=" + encodeURIComponent(p[k]);
    }).join("&");
  }

  /* The smallest half-span that float64 resolves over N pixels about
     (cr, ci): pixels a few units in the last place apart, a margin over
     what the server refuses. */
  function minSpan(cr, ci, N) {
    N = Math.max(N, 240);            // the server's narrowest image
    var size = Math.max(Math.abs(cr), Math.abs(ci), 0.5);
    return Math.max(1e-15, size * EPSILON * N);
  }

  /* Decimal places that show a position to a small part of the span. */
  function places(crpm) {
    return clamp(Math.ceil(-Math.log10(crpm)) + 4, 3, 17);
  }

  function formatCoordinate(x, crpm) {
    var text = x.toFixed(places(crpm));
    return (x >= 0 ? "+" : "") + text;
  }

  function formatSpan(crpm) {
    return String(Number(crpm.toPrecision(4)));
  }

  function number(text, fallback) {
    var x = parseFloat(text);
    return isFinite(x) ? x : fallback;
  }

  /* The view in the form, each value clamped. */
  function getParams() {
    var p = {
      cr: clamp(number($("cr").value, DEFAULTS.cr), -LIMIT, LIMIT),
      ci: clamp(number($("ci").value, DEFAULTS.ci), -LIMIT, LIMIT),
      crpm: number($("crpm").value, DEFAULTS.crpm)
    };
    p.crpm = clamp(p.crpm, minSpan(p.cr, p.ci, imageWidth()), LIMIT);
    return p;
  }

  /* Write a view into the form, rounded as shown; the rounded values are
     the view (so that the permalink reproduces it exactly). */
  function setParams(p) {
    var crpm = clamp(p.crpm, 1e-15, LIMIT);
    $("cr").value = formatCoordinate(clamp(p.cr, -LIMIT, LIMIT), crpm);
    $("ci").value = formatCoordinate(clamp(p.ci, -LIMIT, LIMIT), crpm);
    $("crpm").value = formatSpan(crpm);
  }

  /* The view of a query string, or null if it names none. */
  function paramsFromQuery(search) {
    var q = new URLSearchParams(search);
    if (!q.has("cr") && !q.has("ci") && !q.has("crpm")) return null;
    return {
      cr: number(q.get("cr"), DEFAULTS.cr),
      ci: number(q.get("ci"), DEFAULTS.ci),
      crpm: number(q.get("crpm"), DEFAULTS.crpm)
    };
  }

  /* The width in pixels the image is shown at. */
  function imageWidth() {
    var img = $("mandelbrot");
    return Math.max(1, img.clientWidth || $("image").clientWidth);
  }

  /* The height to show an image of width W at: square where the window
     allows, else as tall as the window, but at least half as tall as
     wide. */
  function imageHeight(W) {
    var room = window.innerHeight - 80;
    return Math.round(clamp(room, W / 2, W));
  }

  /* Ask for the image of view p (default: the form's) at the width shown.
     With push, the view becomes a new entry of the browser's history. */
  function updateImage(p, push) {
    if (p) setParams(p);
    p = getParams();
    setParams(p);
    p = getParams();
    var img = $("mandelbrot");
    var W = imageWidth();
    var H = imageHeight(W);
    var cipm = p.crpm * H / W;
    if (Math.floor(W * cipm / p.crpm) < H) cipm *= 1 + 4 * EPSILON;
    view = {cr: p.cr, ci: p.ci, crpm: p.crpm, cipm: cipm, W: W, H: H};
    var where = {cr: $("cr").value, ci: $("ci").value, crpm: $("crpm").value};
    var image = {cr: where.cr, ci: where.ci, crpm: where.crpm, cipm: cipm};
    img.setAttribute("width", W);
    img.setAttribute("height", H);
    $("image").classList.add("loading");
    img.src = "image.png" + buildQS(Object.assign(
      {}, image, {N: W, client: clientId}));
    $("hd").href = "image.png" + buildQS(Object.assign({}, image, {N: PX_HD}));
    var permalink = location.origin + location.pathname + buildQS(where);
    $("permalink").href = permalink;
    if (push) {
      history.pushState(where, "", permalink);
    } else {
      history.replaceState(where, "", permalink);
    }
    showView();
  }

  /* The point of the view under a mouse event on the image. */
  function xy(e) {
    var img = e.currentTarget;
    var x = clamp(e.offsetX / Math.max(1, img.clientWidth), 0, 1);
    var y = clamp(e.offsetY / Math.max(1, img.clientHeight), 0, 1);
    return {
      cr: view.cr + view.crpm * (2 * x - 1),
      ci: view.ci + view.cipm * (1 - 2 * y)
    };
  }

  /* Recentre on the click and zoom in 5x, or as far as float64 allows
     (then say so). */
  function zoomIn(e) {
    if (!view) return;
    var p = xy(e);
    p.crpm = Math.max(view.crpm / ZOOM, minSpan(p.cr, p.ci, view.W));
    var atLimit = p.crpm >= view.crpm * (1 - 1e-9);
    updateImage(p, true);
    if (atLimit) {
      say("Zoom limit: float64 cannot resolve a smaller view here.");
    } else {
      hover(e);
    }
  }

  function zoomOut() {
    var p = view ? {cr: view.cr, ci: view.ci, crpm: view.crpm} : getParams();
    p.crpm = Math.min(p.crpm * ZOOM, LIMIT);
    updateImage(p, true);
  }

  function scaleText(crpm) {
    var s = 1 / crpm;
    var units = [[1e12, " trillion:1"], [1e9, " billion:1"], [1e6, "M:1"],
                 [1e3, "K:1"]];
    for (var i = 0; i < units.length; i++) {
      if (s > units[i][0]) return decimal(s / units[i][0]) + units[i][1];
    }
    return decimal(s) + ":1";
  }

  function decimal(x) {
    return Number.isInteger(x) ? String(x) : x.toFixed(1);
  }

  function say(text) { $("hover").textContent = text; }

  function readout(cr, ci) {
    say("Scale: " + scaleText(view.crpm) + "  Center: (" +
        formatCoordinate(cr, view.crpm) + ", " +
        formatCoordinate(ci, view.crpm) + ")");
  }

  /* The scale, and the centre a click here would zoom to. */
  function hover(e) {
    if (!view) return;
    var p = xy(e);
    readout(p.cr, p.ci);
  }

  function showView() { if (view) readout(view.cr, view.ci); }

  function imageLoaded() {
    var img = $("mandelbrot");
    $("image").classList.remove("loading");
    img.dataset.loaded = img.getAttribute("src");
  }

  /* Say why the image failed: the server's one-line reason if it gave
     one. */
  function imageFailed() {
    var img = $("mandelbrot");
    var src = img.getAttribute("src");
    $("image").classList.remove("loading");
    if (!src) return;
    fetch(src.replace(/&client=[^&]*/, "")).then(function (r) {
      return r.ok ? "" : r.text();
    }).then(function (text) {
      if (img.getAttribute("src") === src && text) say(text.trim());
    }, function () {
      if (img.getAttribute("src") === src) {
        say("The server is not answering.");
      }
    });
  }

  function start() {
    var img = $("mandelbrot");
    img.addEventListener("load", imageLoaded);
    img.addEventListener("error", imageFailed);
    img.addEventListener("click", zoomIn);
    img.addEventListener("mousemove", hover);
    img.addEventListener("mouseleave", showView);
    $("position").addEventListener("submit", function (e) {
      e.preventDefault();
      updateImage(null, true);
    });
    $("zoomout").addEventListener("click", zoomOut);
    window.addEventListener("popstate", function (e) {
      updateImage(e.state || paramsFromQuery(location.search) || DEFAULTS);
    });
    updateImage(paramsFromQuery(location.search) || DEFAULTS);
  }

  document.addEventListener("DOMContentLoaded", start);

  return {
    buildQS: buildQS, getParams: getParams, setParams: setParams,
    updateImage: updateImage, zoomIn: zoomIn, zoomOut: zoomOut,
    hover: hover, scaleText: scaleText,
    view: function () { return view; }
  };
})();
