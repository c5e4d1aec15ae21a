// The playground: post the form once per chosen candidate and read each answer's SSE stream into its own
// column, side by side. Model output is untrusted: it only ever goes into textContent.
(function () {
  const form = document.getElementById("playground-form");
  if (!form) return;
  const answers = document.getElementById("answers");
  const example = document.getElementById("pg-example");
  const message = document.getElementById("pg-message");
  example.addEventListener("change", () => {
    if (example.value) message.value = example.value;
  });
  // an example picked before this script ran (a fast hand, or the browser restoring the form) still fills the box
  if (example.value && !message.value) message.value = example.value;

  function column(label) {
    const card = document.createElement("section");
    card.className = "card answer";
    card.dataset.state = "waiting";
    card.setAttribute("aria-label", label);
    const title = document.createElement("h3");
    title.textContent = label;
    const text = document.createElement("p");
    text.className = "answer-text";
    text.style.whiteSpace = "pre-wrap";
    const status = document.createElement("p");
    status.className = "muted answer-status";
    status.textContent = "waiting…";
    card.append(title, text, status);
    answers.append(card);
    return { card, text, status };
  }

  async function stream(candidate, label, data) {
    const col = column(label);
    const body = new URLSearchParams(data);
    body.delete("candidate");
    body.append("candidate", candidate);
    let response;
    try {
      response = await fetch(form.action, { method: "POST", body, headers: { "X-CSRFToken": data.get("csrfmiddlewaretoken") } });
    } catch (err) {
      col.card.dataset.state = "error";
      col.status.textContent = "The server did not answer.";
      return;
    }
    if (!response.ok) {
      let message = `Error ${response.status}`;
      try { message = (await response.json()).error.message; } catch (err) { /* not JSON */ }
      col.card.dataset.state = "error";
      col.status.textContent = message;
      return;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    col.card.dataset.state = "streaming";
    col.status.textContent = "writing…";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!line.startsWith("data: ")) continue;
        const payload = line.slice(6);
        if (payload === "[DONE]") continue;
        const chunk = JSON.parse(payload);
        if (chunk.error) {
          col.card.dataset.state = "error";
          col.status.textContent = chunk.error.message;
          return;
        }
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) col.text.textContent += choice.delta.content;
          if (choice.finish_reason) {
            col.card.dataset.state = "done";
            col.status.textContent = choice.finish_reason === "length" ? "stopped at max tokens" : "finished";
          }
        }
      }
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const chosen = Array.from(form.querySelectorAll("input[name=candidate]:checked"));
    answers.replaceChildren();
    if (!chosen.length) {
      const note = document.createElement("p");
      note.className = "empty";
      note.textContent = "Choose at least one candidate.";
      answers.append(note);
      return;
    }
    chosen.forEach((box) => stream(box.value, box.dataset.label, data));
  });
})();
