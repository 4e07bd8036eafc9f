/* SMSBulkApp console: live previews and upload progress. Served by the app itself (no CDN); every
   page also works without it (its buttons post the form and the server renders the whole page). */
"use strict";

function debounce(action, wait) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(action, wait); };
}

/* <form data-preview="URL" data-target="ID">: on each change, the form is posted to URL and the
   answer (the live part only: X-Fragment) replaces the element ID's content. */
document.querySelectorAll("form[data-preview]").forEach((form) => {
  const target = document.getElementById(form.dataset.target);
  let latest = 0;
  const refresh = debounce(async () => {
    const asked = ++latest;
    const answer = await fetch(form.dataset.preview, {
      method: "POST", body: new FormData(form), headers: {"X-Fragment": "1"}, credentials: "same-origin"});
    if (asked === latest && answer.ok) {
      target.innerHTML = await answer.text();
    }
  }, 300);
  form.addEventListener("input", refresh);
  form.addEventListener("change", refresh);
  refresh();
});

/* A button data-use="ID" data-text="...": puts the text in the field ID (the transliteration suggestion). */
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-use]");
  if (!button) return;
  event.preventDefault();
  const field = document.getElementById(button.dataset.use);
  field.value = button.dataset.text;
  field.dispatchEvent(new Event("input", {bubbles: true}));
});

/* <form data-upload>: sent with a progress bar (<progress data-upload-progress>), then the page answered replaces this one. */
document.querySelectorAll("form[data-upload]").forEach((form) => {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const bar = form.querySelector("progress[data-upload-progress]");
    const status = form.querySelector("[data-upload-status]");
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    bar.hidden = false;
    request.upload.addEventListener("progress", (step) => {
      if (step.lengthComputable) bar.value = Math.round(step.loaded / step.total * 100);
    });
    request.upload.addEventListener("load", () => {
      bar.removeAttribute("value");  /* indeterminate: the server is reading the rows */
      status.textContent = status.dataset.importing;
    });
    request.addEventListener("load", () => {
      document.open();
      document.write(request.responseText);
      document.close();
      history.replaceState(null, "", request.responseURL);
    });
    request.send(new FormData(form));
  });
});
