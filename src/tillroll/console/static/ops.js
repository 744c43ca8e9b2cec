// The ops pages' behaviour (served from /static: the console's CSP runs no inline script).
// - The signature pad (电子签名): draw with mouse, pen or finger on a canvas; "confirm" posts the
//   drawing as a PNG to the pad's data-post address with the session's CSRF token, and the answer
//   (the job's panel) replaces the pad's job panel.
// - "check all" on the exception queue.
(function () {
  "use strict";

  function csrfToken() {
    var attr = document.body.getAttribute("hx-headers");
    try { return attr ? JSON.parse(attr)["X-CSRF-Token"] : ""; } catch (e) { return ""; }
  }

  function setUpPad(canvas) {
    if (canvas.dataset.ready) { return; }
    canvas.dataset.ready = "1";
    var ctx = canvas.getContext("2d");
    ctx.lineWidth = 3; ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.strokeStyle = "#000";
    var drawing = false;
    function at(ev) {
      var r = canvas.getBoundingClientRect();
      return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height];
    }
    canvas.addEventListener("pointerdown", function (ev) {
      drawing = true; canvas.setPointerCapture(ev.pointerId);
      var p = at(ev); ctx.beginPath(); ctx.moveTo(p[0], p[1]); ev.preventDefault();
    });
    canvas.addEventListener("pointermove", function (ev) {
      if (!drawing) { return; }
      var p = at(ev); ctx.lineTo(p[0], p[1]); ctx.stroke(); canvas.dataset.inked = "1";
    });
    function stop() { drawing = false; }
    canvas.addEventListener("pointerup", stop);
    canvas.addEventListener("pointercancel", stop);
  }

  function padsIn(root) {
    (root.querySelectorAll ? root.querySelectorAll("canvas.sigpad") : []).forEach(setUpPad);
  }

  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest ? ev.target.closest("button.sig-clear, button.sig-ok") : null;
    if (!btn) { return; }
    var canvas = document.getElementById(btn.dataset.pad);
    if (!canvas) { return; }
    if (btn.classList.contains("sig-clear")) {
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      delete canvas.dataset.inked;
      return;
    }
    btn.disabled = true;
    canvas.toBlob(function (blob) {
      fetch(canvas.dataset.post, {
        method: "POST", body: blob, credentials: "same-origin",
        headers: {"Content-Type": "image/png", "X-CSRF-Token": csrfToken(), "HX-Request": "true"}
      }).then(function (res) { return res.text(); }).then(function (html) {
        var target = document.querySelector(canvas.dataset.target);
        if (!target) { return; }
        target.outerHTML = html;
        var fresh = document.querySelector(canvas.dataset.target);
        if (fresh && window.htmx) { window.htmx.process(fresh); }
        if (fresh) { padsIn(fresh); }
      }).catch(function () { btn.disabled = false; });
    }, "image/png");
  });

  document.addEventListener("change", function (ev) {
    if (ev.target && ev.target.id === "check-all") {
      document.querySelectorAll("input.pick").forEach(function (box) { box.checked = ev.target.checked; });
    }
  });

  // A cashier form is emptied once sent: the card number and PIN do not stay on the screen.
  document.addEventListener("htmx:afterRequest", function (ev) {
    var form = ev.detail && ev.detail.elt;
    if (form && form.tagName === "FORM" && form.id && form.id.indexOf("form-") === 0) { form.reset(); }
  });

  document.addEventListener("DOMContentLoaded", function () { padsIn(document); });
  document.addEventListener("htmx:afterSettle", function (ev) { padsIn(ev.target); });
})();
