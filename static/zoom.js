// Drag across a report graph to zoom into that time range. Optional: every page works
// without it (the time navigator's links do the same in fixed steps).
(function () {
  "use strict";
  document.querySelectorAll("img[data-zoom]").forEach(function (img) {
    var from = Date.parse(img.dataset.from), to = Date.parse(img.dataset.to);
    var left = Number(img.dataset.left), plot = Number(img.dataset.plot), width = Number(img.dataset.width);
    var start = null;
    function timeAt(event) {
      var box = img.getBoundingClientRect();
      var x = (event.clientX - box.left) * width / box.width;
      var share = Math.min(Math.max((x - left) / plot, 0), 1);
      return from + share * (to - from);
    }
    img.addEventListener("mousedown", function (event) { start = timeAt(event); event.preventDefault(); });
    img.addEventListener("mouseup", function (event) {
      if (start === null) { return; }
      var end = timeAt(event), a = Math.min(start, end), b = Math.max(start, end);
      start = null;
      if (b - a < 60000) { return; } // a click, not a drag
      var url = new URL(img.dataset.report, window.location.href);
      url.searchParams.set("from", new Date(a).toISOString().slice(0, 19) + "Z");
      url.searchParams.set("to", new Date(b).toISOString().slice(0, 19) + "Z");
      window.location.assign(url.toString());
    });
    img.style.cursor = "crosshair";
  });
})();
