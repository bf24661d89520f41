// MathJax for the arithmatex output of the Markdown pages (\( \), \[ \]) and for the notebooks
// rendered by mkdocs-jupyter, whose Markdown cells keep Jupyter's $ ... $ delimiters.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: "tex2jax_ignore|highlight|jp-OutputArea",
  },
};

document$.subscribe(() => {
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
