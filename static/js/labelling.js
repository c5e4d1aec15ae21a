// The labelling page's keyboard shortcuts and the "keep mine / take theirs" buttons of an edit conflict.
(function () {
  const form = document.getElementById("label-form");
  const editor = document.getElementById("ideal");
  function typing(el) { return el && (el.tagName === "TEXTAREA" || el.tagName === "INPUT" || el.tagName === "SELECT"); }
  function go(id) { const link = document.getElementById(id); if (link) window.location.href = link.href; }
  function setStatus(id) { const b = document.getElementById(id); if (form && b) b.click(); }
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && typing(document.activeElement)) { document.activeElement.blur(); return; }
    if ((event.ctrlKey || event.metaKey) && event.key === "s") {
      event.preventDefault(); if (form) htmx.trigger(form, "submit"); return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || typing(document.activeElement)) return;
    const actions = {
      e: function () { if (editor) editor.focus(); }, a: function () { setStatus("approve"); },
      r: function () { setStatus("reject"); }, d: function () { setStatus("draft"); },
      j: function () { go("next-link"); }, k: function () { go("prev-link"); },
      h: function () { const h = document.getElementById("history"); if (h) h.open = !h.open; },
    };
    if (actions[event.key]) { event.preventDefault(); actions[event.key](); }
  });
  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-resolve]");
    if (!button || !form) return;
    const source = document.getElementById(button.dataset.resolve === "yours" ? "conflict-yours" : "conflict-theirs");
    editor.value = source.textContent;
    document.getElementById("revision").value = button.dataset.revision;
    htmx.trigger(form, "submit");
  });
})();
