// The review page's keyboard shortcuts: a / b / t pick the winner, i shows the ideal output, Ctrl+Enter submits.
(function () {
  var form = document.getElementById("judgment"), ideal = document.getElementById("ideal"), toggle = document.getElementById("toggle-ideal");
  function flip() { ideal.hidden = !ideal.hidden; toggle.setAttribute("aria-expanded", String(!ideal.hidden)); toggle.textContent = ideal.hidden ? "Show ideal output (i)" : "Hide ideal output (i)"; }
  toggle.addEventListener("click", flip);
  document.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); return; }
    var t = e.target; if (t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type === "text"))) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var pick = {a: "A", b: "B", t: "tie"}[e.key.toLowerCase()];
    if (pick) { var r = form.querySelector('input[name="winner"][value="' + pick + '"]'); r.checked = true; r.focus(); e.preventDefault(); }
    else if (e.key.toLowerCase() === "i") { flip(); e.preventDefault(); }
  });
})();
