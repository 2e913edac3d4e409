// Portcullis web UI: the few things plain HTML cannot do. Every page works without
// this script; it only adds copy buttons (hidden until this script shows them).
"use strict";

(function () {
  const status = document.getElementById("copy-status");

  function say(text) {
    if (status) {
      // Cleared first, so the same message is announced again.
      status.textContent = "";
      window.setTimeout(function () { status.textContent = text; }, 50);
    }
  }

  // Clipboard API where the page is a secure context, else the older way: select the
  // text and let the browser copy the selection.
  function copy(text, source) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    const copied = document.execCommand("copy");
    selection.removeAllRanges();
    return copied ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    const source = document.getElementById(button.dataset.copy);
    if (!source) {
      return;
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      const what = button.dataset.copyLabel || "Text";
      copy(source.textContent.trim(), source).then(
        function () { say(what + " copied to the clipboard."); },
        function () { say("Copying failed: select the text and copy it by hand."); }
      );
    });
  });
})();
