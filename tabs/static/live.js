// The run side panel (tabs/live_panel.py): a browser notification when a run ends while the page is in the
// background, once the person allowed it with "Notify me when a run ends".
window.studioLive = {
  label() {
    const button = document.querySelector("#live-notify");
    if (!button) return;
    if (!("Notification" in window)) button.textContent = "Notifications: not in this browser";
    else if (Notification.permission === "granted") button.textContent = "Notifications on when a run ends";
    else if (Notification.permission === "denied") button.textContent = "Notifications blocked by the browser";
  },
  async askPermission() {
    if ("Notification" in window && Notification.permission === "default") await Notification.requestPermission();
    window.studioLive.label();
  },
  notify(text) {
    if (text && document.hidden && "Notification" in window && Notification.permission === "granted") {
      new Notification("SD Studio", { body: text, tag: "studio-run-end" });
    }
  },
};
setTimeout(() => window.studioLive.label(), 1500);
