"""``featviz``: zero-shot feature pictures (PCA colours, similarity maps, k-means) and the HTML report.

The package owns the ``featviz`` command line (:mod:`common.featviz.cli`) and its modality-free part,
the results page (:mod:`common.featviz.report`). The modality sub-commands live with their modality
(``pointprobe.featviz``: ``featviz points``; ``videoprobe.featviz``: ``featviz video``) on top of the
pictures code of ``common.pca`` / ``common.render`` and each modality's ``viz`` module; the command
list names them by module string and imports them only when the parser is built, so ``common`` still
imports no modality.
"""
