// revcast managers' page: progressive enhancement only (everything works without JavaScript).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Filter menus apply on change; the Apply button stays for keyboard and no-JS use.
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { if (select.form) { select.form.submit(); } });
  });
});
