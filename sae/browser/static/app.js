// saelake browser: small conveniences only; every page works without JavaScript.
// Arrow keys step to the previous / next latent; a changed select re-applies the list's filters.
document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select, textarea")) return;
  const rel = { ArrowLeft: "prev", ArrowRight: "next" }[event.key];
  const link = rel && document.querySelector(`h1 a[rel=${rel}], nav.pages a[rel=${rel}]`);
  if (link) window.location.href = link.href;
});
document.querySelectorAll("form.filters select").forEach((select) => {
  select.addEventListener("change", () => select.form.requestSubmit());
});
