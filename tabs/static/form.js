// Schema forms (tabs/form.py): window.sfReveal(elemId) brings a field into view (once its sub-tab or
// "More settings" has opened) and highlights it briefly; a settings search result or the kind radio calls it.
window.sfReveal = (elemId) => {
  let tries = 0;
  const go = () => {
    const field = document.getElementById(elemId);
    if (field && field.offsetParent !== null) {
      field.scrollIntoView({ block: "center", behavior: "instant" });
      field.classList.add("sf-found");
      const input = field.querySelector("input, textarea");
      if (input) input.focus({ preventScroll: true });
      setTimeout(() => field.classList.remove("sf-found"), 2500);
    } else if (tries++ < 150) {
      setTimeout(go, 100);
    }
  };
  go();
};
