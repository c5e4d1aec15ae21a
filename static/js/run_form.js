// The launch form shows only what the chosen way of learning uses (a field with an error always stays in view).
(function () {
  var method = document.getElementById("id_method");
  if (!method) return;
  var only = {
    dataset_version: ["supervised", "reinforcement"],
    preference_version: ["dpo"],
    beta: ["dpo"],
    start_from: ["dpo", "reinforcement"],
    graders: ["reinforcement"],
    graders_from_rubric: ["reinforcement"],
    num_generations: ["reinforcement"],
    max_completion_length: ["reinforcement"]
  };
  function show() {
    var chosen = method.value || "supervised";
    Object.keys(only).forEach(function (name) {
      var input = document.getElementById("id_" + name);
      var box = input && input.closest(".field");
      if (box) box.hidden = only[name].indexOf(chosen) < 0 && !box.classList.contains("has-error");
    });
  }
  method.addEventListener("change", show);
  show();
})();
