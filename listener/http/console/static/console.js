// Refreshes each element marked data-refresh="<url>" in place every data-every seconds, so the
// overview and a timeline stay current without reloading the page (no framework needed for this).
"use strict";
document.querySelectorAll("[data-refresh]").forEach(function (element) {
  var every = Number(element.dataset.every || 5) * 1000;
  async function refresh() {
    try {
      var response = await fetch(element.dataset.refresh, { credentials: "same-origin" });
      if (response.status === 401) {
        window.location.assign("/console/login");
        return;
      }
      if (response.ok) {
        element.innerHTML = await response.text();
      }
    } catch (error) {
      // The worker is restarting or the network blinked: the next tick tries again.
    }
    window.setTimeout(refresh, every);
  }
  window.setTimeout(refresh, every);
});
