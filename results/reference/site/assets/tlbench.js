/* tlbench: one script for the report (inlined) and every page of a published site: sortable
   tables and the model filter. No dependencies, no network. */
(function () {
  "use strict";

  // A number at the start of a cell's text, then a space or the end: "81.3 ± 0.4" -> 81.3,
  // "12,810" -> 12810, "+1.2" -> 1.2; "2026-11-29 04:39" and "lite0-96" are text.
  var LEADING_NUMBER = /^[-+]?(\d[\d,]*)?\.?\d+(e[-+]?\d+)?(?=\s|$)/i;

  // A cell's sort key: its data-value when set (a number or text), else the number its text
  // starts with, else its text. Cells without a value ("—", failed) always go last, whichever
  // the direction.
  function key(cell) {
    if (!cell) return null;
    var raw = cell.getAttribute("data-value");
    if (raw !== null) {
      if (raw === "" || raw === "\u2014") return null;
      var value = Number(raw);
      return isNaN(value) ? raw.toLowerCase() : value;
    }
    var text = cell.textContent.trim();
    var found = text.match(LEADING_NUMBER);
    if (found) return Number(found[0].replace(/,/g, ""));
    if (text === "" || text === "\u2014") return null;
    return text.toLowerCase();
  }

  function compare(a, b, direction) {
    if (a === null || b === null) return a === b ? 0 : a === null ? 1 : -1;
    if (typeof a === "number" && typeof b === "number") return direction * (a - b);
    if (typeof a === "number") return -1;
    if (typeof b === "number") return 1;
    return direction * a.localeCompare(b);
  }

  function sortBy(table, header, column) {
    var first = header.getAttribute("data-order") === "desc" ? "descending" : "ascending";
    var current = header.getAttribute("aria-sort");
    var next = current === first ? (first === "ascending" ? "descending" : "ascending") : first;
    table.querySelectorAll("thead th").forEach(function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", next);
    var direction = next === "ascending" ? 1 : -1;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, index) {
      return { row: row, key: key(row.cells[column]), index: index };
    });
    rows.sort(function (r, s) { return compare(r.key, s.key, direction) || r.index - s.index; });
    rows.forEach(function (item) { body.appendChild(item.row); });
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(headers, function (header, column) {
      header.tabIndex = 0;
      header.title = "click to sort";
      header.addEventListener("click", function () { sortBy(table, header, column); });
      header.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          sortBy(table, header, column);
        }
      });
    });
  });

  function applyFilter(input) {
    var table = document.getElementById(input.getAttribute("data-table"));
    if (!table) return;
    var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    var rows = table.tBodies[0].rows, shown = 0;
    Array.prototype.forEach.call(rows, function (row) {
      var text = row.getAttribute("data-filter") || row.textContent.toLowerCase();
      var match = terms.every(function (term) { return text.indexOf(term) !== -1; });
      row.hidden = !match;
      if (match) shown += 1;
    });
    var count = document.querySelector('[data-count-for="' + table.id + '"]');
    if (count) count.textContent = shown + " of " + rows.length + " shown";
  }

  document.querySelectorAll("input.filter").forEach(function (input) {
    input.addEventListener("input", function () { applyFilter(input); });
    applyFilter(input);
  });
})();
