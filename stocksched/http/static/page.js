// The operator page's only script: the API token for requests, and readable messages.
// Everything else (polling, swapping fragments, confirmations) is htmx attributes in the
// server-rendered templates. The token lives in sessionStorage: this tab only, never a
// cookie or a URL.
(function () {
  "use strict";
  const KEY = "stocksched-token";
  const message = document.getElementById("message");
  const tokenInput = document.getElementById("token");

  function say(text, kind) {
    message.textContent = text;
    message.className = kind;
    message.hidden = false;
  }

  function errorText(xhr) {
    try {
      const body = JSON.parse(xhr.responseText);
      if (body && typeof body.error === "string") return body.error;
    } catch (e) { /* not JSON: fall through */ }
    return xhr.statusText || "no answer";
  }

  document.getElementById("token-form").addEventListener("submit", function (event) {
    event.preventDefault();
    if (tokenInput.value) sessionStorage.setItem(KEY, tokenInput.value);
    tokenInput.value = "";
    say("Token kept for this tab.", "ok");
    htmx.trigger(document.body, "refresh");
  });
  document.getElementById("token-forget").addEventListener("click", function () {
    sessionStorage.removeItem(KEY);
    say("Token forgotten.", "ok");
  });

  document.body.addEventListener("htmx:configRequest", function (event) {
    const token = sessionStorage.getItem(KEY);
    if (token) event.detail.headers["Authorization"] = "Bearer " + token;
  });

  document.body.addEventListener("htmx:afterRequest", function (event) {
    const xhr = event.detail.xhr;
    const action = event.detail.requestConfig.verb === "post";
    if (xhr.status === 401) {
      say("Not allowed (HTTP 401): this daemon needs its API token. Enter it above; " +
          "it is kept for this tab only.", "error");
    } else if (action && xhr.status === 409) {
      say("Already running (HTTP 409): " + errorText(xhr), "error");
    } else if (!event.detail.successful) {
      say("Failed (HTTP " + (xhr.status || "no answer") + "): " + errorText(xhr), "error");
    } else if (action) {
      say(event.detail.elt.dataset.done || "Done.", "ok");
      htmx.trigger(document.body, "refresh");
    }
  });
})();
