// Confirmation for consequential forms: <form data-confirm="Really?">. Served from our own
// static files like htmx; without JavaScript the forms still post (the services decide).
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
